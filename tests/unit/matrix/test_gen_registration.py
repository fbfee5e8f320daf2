from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bridge.cli import main


def test_gen_registration_writes_tokens_files_and_prints_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "registration.yaml"
    as_file, hs_file = tmp_path / "secrets" / "as", tmp_path / "secrets" / "hs"
    code = main(
        [
            "gen-registration",
            "--url", "http://bridge:8080",
            "--server-name", "example.org",
            "--output", str(output),
            "--as-token-file", str(as_file),
            "--hs-token-file", str(hs_file),
        ]
    )  # fmt: skip
    assert code == 0
    registration = yaml.safe_load(output.read_text())
    assert registration["url"] == "http://bridge:8080"
    assert registration["rate_limited"] is False
    assert registration["namespaces"]["users"] == [
        {"exclusive": True, "regex": r"@teams_.*:example\.org"}
    ]
    assert registration["as_token"] == as_file.read_text().strip()
    assert registration["hs_token"] == hs_file.read_text().strip()
    assert registration["as_token"] != registration["hs_token"]
    assert len(registration["as_token"]) >= 48
    assert (output.stat().st_mode & 0o777) == 0o600
    printed = capsys.readouterr().out
    assert f"as_token_file: {as_file}" in printed
    assert registration["as_token"] not in printed

    # Existing token files are reused: the homeserver's copy stays valid.
    assert main(["gen-registration", "--url", "http://b", "--server-name", "example.org",
                 "--output", str(output), "--as-token-file", str(as_file),
                 "--hs-token-file", str(hs_file)]) == 0  # fmt: skip
    again = yaml.safe_load(output.read_text())
    assert again["as_token"] == registration["as_token"]
