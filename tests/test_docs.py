"""The README's claims that code can check: its generated blocks (flags, memory table) are current."""

from __future__ import annotations

from tests.helpers import load_script


def test_the_readme_blocks_are_generated_from_the_code():
    blocks = load_script("scripts/dev/readme_blocks.py", "readme_blocks")
    readme = (blocks.REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert blocks.updated_readme(readme) == readme, "run: python scripts/dev/readme_blocks.py"
    from trainer.config import midtrain_parser, pretrain_parser

    for parser in (pretrain_parser(), midtrain_parser()):
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}`" in readme, flag
