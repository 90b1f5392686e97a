"""``python -m deit`` (also what ``torchrun -m deit`` runs)."""
from deit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
