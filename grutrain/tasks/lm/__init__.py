"""Task lm: a language model over a text file (characters, words, bytes or byte-level BPE):
the corpus and its token cache, the tokenisers, windows of tokens, perplexity, bits per character
and text sampling."""
