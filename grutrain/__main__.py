import sys

try:  # Ctrl-C while torch and the CLI are still importing: the CLI's own "interrupted", not a traceback
    from grutrain.cli import run
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    run()
