"""`stillhouse pipeline run --repo-id`: a push the Hub would refuse is refused before the run.

The id is checked with huggingface_hub's own validator, and a token must be at hand
(`HF_TOKEN` or the one `hf auth login` saved); both before the pipeline is loaded, so
a bad option costs nothing and the error names the option, the value and the fix.
"""

from __future__ import annotations

import pytest

from stillhouse.core import cli

TOKEN = "hf_FAKE_push_options_token_0123456789"


@pytest.fixture
def no_saved_token(monkeypatch, tmp_path):
    """No token anywhere huggingface_hub looks (env, the saved-token file, OIDC)."""
    import huggingface_hub.constants as hf_constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


@pytest.fixture
def pushed(monkeypatch):
    """The pushes the CLI asked for, with the Hub call replaced."""
    from stillhouse.distiset import Distiset

    calls: list[tuple[str, bool]] = []
    monkeypatch.setenv("STILLHOUSE_PROGRESS", "0")
    monkeypatch.setattr(
        Distiset, "push_to_hub",
        lambda self, repo_id, private=False: calls.append((repo_id, private)),
    )
    return calls


def _run(config, tmp_path, *extra: str) -> int:
    return cli.main(["pipeline", "run", "--config", str(config),
                     "--cache-dir", str(tmp_path / "c"), *extra])


@pytest.mark.parametrize(
    ("repo_id", "reason"),
    [
        ("bad repo id!!", "must use alphanumeric chars"),
        ("me/data/extra", "must be in the form 'repo_name' or 'namespace/repo_name'"),
        ("me/my--data", "Cannot have -- or .."),
        ("", "must use alphanumeric chars"),
    ],
)
def test_a_bad_repo_id_is_refused_before_the_run(
    config, tmp_path, monkeypatch, capsys, pushed, repo_id, reason
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert _run(config, tmp_path, "--repo-id", repo_id) == 1
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith(f"error: --repo-id {repo_id!r} is not a Hub dataset repository id (")
    assert reason in first and first.endswith("e.g. --repo-id my-user/my-dataset.")
    assert "Run summary" not in err and pushed == []
    assert not (tmp_path / "c").exists()  # nothing ran: no run folder


def test_no_token_is_refused_before_the_run(config, tmp_path, capsys, pushed, no_saved_token):
    assert _run(config, tmp_path, "--repo-id", "me/clidemo") == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (
        "error: --repo-id 'me/clidemo' needs a Hugging Face token to push, and none was "
        "found. Set HF_TOKEN or run `hf auth login`, then run the command again."
    )
    assert pushed == [] and not (tmp_path / "c").exists()


def test_a_good_repo_id_with_a_token_runs_then_pushes(
    config, tmp_path, monkeypatch, capsys, pushed, no_saved_token
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert _run(config, tmp_path, "--repo-id", "me/clidemo", "--private") == 0
    assert pushed == [("me/clidemo", True)]
    captured = capsys.readouterr()
    assert "Pushed to https://huggingface.co/datasets/me/clidemo" in captured.out
    assert TOKEN not in captured.out + captured.err


def test_the_console_script_refuses_a_bad_repo_id_without_running(cli, config, cache_dir):
    """The real command, as the audit ran it: one error line, exit 1, no step started."""
    done = cli("pipeline", "run", "--config", str(config), "--repo-id", "bad repo id!!")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0].startswith(
        "error: --repo-id 'bad repo id!!' is not a Hub dataset repository id ("
    )
    assert "finished in" not in done.stderr and not cache_dir.exists()


def test_a_push_the_hub_refuses_after_the_run_is_one_line_saying_the_results_are_safe(
    config, tmp_path, monkeypatch, capsys, no_saved_token
):
    """At the Hub's HTTP boundary: a server that refuses every request (403). The run's
    results stay in its cache folder; the error says so and how to push again."""
    from http.server import BaseHTTPRequestHandler

    from tests.support.local_servers import http_server, point_hub_clients_at

    class Refusing(BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            body = b'{"error": "You are not allowed to write to this namespace"}'
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = _refuse

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.setenv("STILLHOUSE_PROGRESS", "0")
    with http_server(Refusing) as url:
        point_hub_clients_at(url, monkeypatch, tmp_path)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        assert _run(config, tmp_path, "--repo-id", "me/clidemo") == 1
    captured = capsys.readouterr()
    [line] = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: The run finished (its cache folder: ")
    assert "but pushing its results to 'me/clidemo' failed: " in line
    assert line.endswith("the run is answered from the cache and only the push is done again.")
    assert "Traceback" not in captured.err and TOKEN not in captured.out + captured.err
