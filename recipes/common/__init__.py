"""What several recipes share: where the development data is (:mod:`.devdata`), the
release of a view model from candidates (:mod:`.release`), films stored, augmented and
scored in batches (:mod:`.films`), and the two sets of non-chest images
(:mod:`.nonchest`, the measurement set; :mod:`.nonchest_dev`, the development set)."""
