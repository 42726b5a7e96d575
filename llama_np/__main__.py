import sys

try:
    from .cli import main
except KeyboardInterrupt:          # Ctrl-C while the modules load: the same one line as later
    print("\ninterrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
