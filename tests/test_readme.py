"""The README stays true: every setting is documented, and CI runs the README's test command."""

from pathlib import Path

from runbot.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_reference():
    missing = [f"RUNBOT_{n.upper()}" for n in Settings.model_fields if f"`RUNBOT_{n.upper()}`" not in README]
    assert not missing, f"run scripts/config_reference.py --update README.md; missing: {missing}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in README and "make demo" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_step_type_is_in_the_runbook_reference():
    from runbot.steps.registry import available_types

    missing = [t for t in available_types() if f"`{t}`" not in README]
    assert not missing, missing
