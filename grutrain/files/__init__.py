"""Every byte into or out of the process, with its checks: checkpoints, the files a command reads
(data, configs, predict inputs), the files it was asked to write, strict JSON, the standard streams.

Rule: knows no task, model or training loop; imports only the ground floor (errors). A message about
a file names the file and what would fix it.
"""
