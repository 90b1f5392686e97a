"""Write docs/settings.md: every ``deit train`` setting from its field (``deit.train.settings``)."""
from pathlib import Path

from deit.train.settings import settings_markdown

if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    path.write_text(settings_markdown())
    print(f"wrote {path}")
