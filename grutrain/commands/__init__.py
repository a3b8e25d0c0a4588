"""One module per command beyond fit: eval, sample, predict, prepare, lr-find, runs, bench, kernels, export,
init. Each is a plain function that returns a value or raises GrutrainError.

Rule: only grutrain.cli imports a command; a command imports the trainer, the tasks (through their
registry and ability protocols) and the floors below, never another command's module.
"""
