"""Task classify: (sequence, label) examples from JSONL, CSV or UCR/UEA .ts files; stratified
splits, padded batches, accuracy and macro-F1 next to the majority class."""
