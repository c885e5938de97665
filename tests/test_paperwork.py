"""The project's paperwork agrees with itself: CITATION.cff is valid CFF 1.2.0, the versions and the
licence match pyproject.toml, LICENSE is the Apache-2.0 text, and the docs' flag tables list every
field of each experiment's config."""

import dataclasses
import os
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name: str) -> str:
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def pyproject() -> dict:
    return tomllib.loads(read("pyproject.toml"))["project"]


def test_citation_is_valid_cff():
    pytest.importorskip("cffconvert")
    result = subprocess.run(
        [sys.executable, "-m", "cffconvert.cli.cli", "--validate", "-i", os.path.join(ROOT, "CITATION.cff")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_citation_version_and_license_match_pyproject():
    text = read("CITATION.cff")
    version = re.search(r"^version: (\S+)$", text, flags=re.M).group(1)
    license_id = re.search(r"^license: (\S+)$", text, flags=re.M).group(1)
    assert version == pyproject()["version"]
    assert license_id == pyproject()["license"] == "Apache-2.0"


def test_license_is_the_apache_2_text():
    text = read("LICENSE")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    # The official text has 9 numbered sections and ends its terms with this line.
    assert [int(n) for n in re.findall(r"^\s+(\d)\. ", text, flags=re.M)][:9] == list(range(1, 10))
    assert "END OF TERMS AND CONDITIONS" in text


def test_changelog_follows_keep_a_changelog():
    text = read("CHANGELOG.md")
    assert text.startswith("# Changelog")
    assert "## [Unreleased]" in text
    assert re.search(r"^## \[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}$", text, flags=re.M)


def test_flag_tables_list_every_config_field():
    sys.path.insert(0, os.path.join(ROOT, "docs", "_ext"))
    try:
        import flagtable
    finally:
        sys.path.pop(0)
    from vae_jax.protocol import TrainConfig
    from vae_jax.tasks.vae import VAEConfig, VAEObjectiveConfig

    expected = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(VAEConfig)}
    expected -= {"--" + f.name.replace("_", "-") for f in dataclasses.fields(VAEObjectiveConfig)}
    flags = {row[0].split(" ")[0] for row in flagtable.flag_rows(VAEConfig, VAEObjectiveConfig)}
    assert flags == expected
    shared = flagtable.flag_rows(TrainConfig)
    assert len(shared) == len(dataclasses.fields(TrainConfig))
    epochs = [help_text for flag, help_text in shared if flag.startswith("--epochs")]
    epochs_help = next(f.metadata["help"] for f in dataclasses.fields(TrainConfig) if f.name == "epochs")
    assert epochs and " ".join(epochs_help.split()) in " ".join(epochs[0].split())
