"""Training, evaluation and reporting for the cxr-orient view classifier."""
