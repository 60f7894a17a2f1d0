"""The README's claims that code can check: its flag reference is the parsers' (no drift)."""

from __future__ import annotations

from tests.helpers import load_script


def test_the_readme_flag_reference_is_generated_from_the_parsers():
    flags_doc = load_script("scripts/flags_doc.py", "flags_doc")
    readme = (flags_doc.REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert flags_doc.updated_readme(readme) == readme, "run: python scripts/flags_doc.py"
    from trainer.config import midtrain_parser, pretrain_parser

    for parser in (pretrain_parser(), midtrain_parser()):
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}`" in readme, flag
