"""A loader's `storage_options` against S3 (a moto server, s3fs with its default
settings): they reach s3fs unchanged however often the step reads, and their
credentials are never written, logged or hashed, while the endpoint is."""

from __future__ import annotations

import json

import pytest

from stillhouse.core import Pipeline
from stillhouse.core.testing import run_generator
from stillhouse.steps import LoadDataFromDisk, LoadDataFromFileSystem
from tests.steps.helpers import needs_full_install

pytestmark = pytest.mark.timeout(120)

ROWS = [{"text": f"line {i}", "n": i} for i in range(5)]
KEY_ID = "AKIA-STEPS-KEY-ID-7f3a"
SECRET = "steps-secret-access-key-9c1e"
SESSION = "steps-session-token-4b2d"
PASSWORD = "steps-password-0d5f"


def put_jsonl(fs, path, rows):
    fs.pipe(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def with_credentials(options, secret=SECRET):
    """`options` (an endpoint) plus credentials at the top level and nested."""
    client_kwargs = {**options["client_kwargs"], "aws_session_token": SESSION}
    return {"key": KEY_ID, "secret": secret, "client_kwargs": client_kwargs,
            "config_kwargs": {"proxies_config": {"proxy_password": PASSWORD}}}


def test_storage_options_reach_s3fs_unchanged_however_often_the_step_reads(s3_as_users_have_it):
    options, fs = s3_as_users_have_it
    put_jsonl(fs, "stillhouse-steps/opts/part-0.jsonl", ROWS)
    given = json.loads(json.dumps(options))
    loader = LoadDataFromFileSystem(data_files="s3://stillhouse-steps/opts/*.jsonl",
                                    storage_options=options, batch_size=2)
    first = loader.signature_extra()
    assert loader.outputs == ["text", "n"]  # validation: `datasets` reads with the options
    assert loader.signature_extra() == first  # s3fs gets no `hf=` from `datasets`
    assert [row for batch in run_generator(loader) for row in batch] == ROWS
    assert [row for batch in run_generator(loader) for row in batch] == ROWS
    assert loader.storage_options == given and options == given


def test_credentials_are_secrets_the_endpoint_is_not(s3_as_users_have_it):
    options, fs = s3_as_users_have_it
    put_jsonl(fs, "stillhouse-steps/opts/part-0.jsonl", ROWS)
    loader = LoadDataFromFileSystem(data_files="s3://stillhouse-steps/opts/*.jsonl",
                                    storage_options=with_credentials(options))
    dumped = json.dumps(loader.dump())
    assert options["client_kwargs"]["endpoint_url"] in dumped
    for secret in (KEY_ID, SECRET, SESSION, PASSWORD):
        assert secret not in dumped and secret not in repr(loader.storage_options)
    assert [row for batch in run_generator(loader) for row in batch] == ROWS  # s3fs gets them

    other_secret = LoadDataFromFileSystem(data_files="s3://stillhouse-steps/opts/*.jsonl",
                                          storage_options=with_credentials(options, "other"))
    assert other_secret.signature == loader.signature
    other_endpoint = LoadDataFromFileSystem(
        data_files="s3://stillhouse-steps/opts/*.jsonl",
        storage_options=with_credentials({"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}),
    )
    assert other_endpoint.signature != loader.signature


@pytest.mark.integration
def test_credentials_are_in_no_cache_file_nor_saved_pipeline_nor_log(
    s3_as_users_have_it, tmp_path, caplog
):
    needs_full_install()
    from stillhouse.cache.signature import step_signatures

    options, fs = s3_as_users_have_it
    put_jsonl(fs, "stillhouse-steps/opts/part-0.jsonl", ROWS)
    from datasets import Dataset

    Dataset.from_list(ROWS).save_to_disk("s3://stillhouse-steps/saved", storage_options=options)

    def build(secret=SECRET):
        with Pipeline(name="secrets", cache_dir=str(tmp_path / "cache")) as pipeline:
            LoadDataFromFileSystem(name="files", data_files="s3://stillhouse-steps/opts/*.jsonl",
                                   storage_options=with_credentials(options, secret))
            LoadDataFromDisk(name="disk", dataset_path="s3://stillhouse-steps/saved",
                             storage_options=with_credentials(options, secret))
        return pipeline

    pipeline = build()
    caplog.set_level("INFO")  # DEBUG: botocore itself logs the signed request headers
    distiset = pipeline.run(progress=False)
    assert distiset["files"]["train"].to_list() == ROWS == distiset["disk"]["train"].to_list()
    (tmp_path / "saved").mkdir()
    pipeline.save(tmp_path / "saved" / "pipeline.yaml")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "pipeline.log" for p in written)
    for path in written:
        content = path.read_bytes()
        for secret in (KEY_ID, SECRET, SESSION, PASSWORD):
            assert secret.encode() not in content, f"{secret!r} written to {path}"
    for secret in (KEY_ID, SECRET, SESSION, PASSWORD):
        assert secret not in caplog.text
    saved = (tmp_path / "saved" / "pipeline.yaml").read_text()
    assert saved.count(options["client_kwargs"]["endpoint_url"]) == 2

    assert step_signatures(build("another-secret").dag) == step_signatures(pipeline.dag)


@pytest.mark.integration
def test_a_saved_pipeline_runs_with_its_credentials_given_again(s3_as_users_have_it, tmp_path):
    needs_full_install()
    options, fs = s3_as_users_have_it
    put_jsonl(fs, "stillhouse-steps/opts/part-0.jsonl", ROWS)
    with Pipeline(name="again", cache_dir=str(tmp_path / "cache")) as pipeline:
        LoadDataFromFileSystem(name="files", data_files="s3://stillhouse-steps/opts/*.jsonl",
                               storage_options=with_credentials(options))
    pipeline.save(tmp_path / "pipeline.yaml")

    reloaded = Pipeline.from_yaml(tmp_path / "pipeline.yaml")
    assert reloaded.dag.get_step("files").storage_options == {
        "client_kwargs": options["client_kwargs"], "config_kwargs": {"proxies_config": {}},
    }
    # What `stillhouse pipeline run --config ... --param files.storage_options.key=...` does:
    # the credentials given are added to the options the file kept.
    distiset = reloaded.run(progress=False, parameters={"files": {"storage_options": {
        "key": KEY_ID, "secret": SECRET, "client_kwargs": {"aws_session_token": SESSION},
    }}})
    assert distiset["default"]["train"].to_list() == ROWS
    step = reloaded.dag.get_step("files")
    assert step.storage_options["client_kwargs"]["endpoint_url"] == options["client_kwargs"]["endpoint_url"]
    assert step.storage_options["secret"].get_secret_value() == SECRET


def test_which_options_are_credentials():
    from stillhouse.steps._options import hide_credentials, plain_options

    given = {
        "key": "k", "secret": "s", "token": "t", "password": "p", "anon": False,
        "endpoint_url": "http://e", "region_name": "r", "profile": "dev",
        "client_kwargs": {"aws_access_key_id": "a", "aws_secret_access_key": "b",
                          "aws_session_token": "c", "endpoint_url": "http://e"},
        "headers": {"Authorization": "Bearer x", "Accept": "*/*"},
        "s3_additional_kwargs": {"SSECustomerKey": "sse"},
        "credentials": {"client_email": "e", "private_key": "pk"},
        "account_name": "acct", "account_key": "ak", "sas_token": "st",
        "connection_string": "cs",
    }
    hidden = hide_credentials(given)
    dumped = LoadDataFromFileSystem(data_files="x.jsonl", storage_options=given).dump()
    kept = dumped["storage_options"]
    assert kept == {
        "anon": False, "endpoint_url": "http://e", "region_name": "r", "profile": "dev",
        "client_kwargs": {"endpoint_url": "http://e"}, "headers": {"Accept": "*/*"},
        "s3_additional_kwargs": {}, "credentials": {}, "account_name": "acct",
    }
    revealed = plain_options(hidden)
    assert revealed == given
    revealed["client_kwargs"]["endpoint_url"] = "changed"
    assert hidden["client_kwargs"]["endpoint_url"] == "http://e"  # a copy, nested dicts too


def test_credentials_given_as_parameters_are_added_to_the_kept_options():
    loader = LoadDataFromFileSystem(data_files="x.jsonl",
                                    storage_options={"client_kwargs": {"endpoint_url": "http://e"}})
    loader.set_runtime_parameters({"storage_options": {
        "key": KEY_ID, "client_kwargs": {"aws_session_token": SESSION},
    }})
    assert loader.storage_options["client_kwargs"]["endpoint_url"] == "http://e"
    assert loader.storage_options["client_kwargs"]["aws_session_token"].get_secret_value() == SESSION
    assert loader.storage_options["key"].get_secret_value() == KEY_ID
    assert KEY_ID not in json.dumps(loader.dump()) and SESSION not in json.dumps(loader.dump())


def no_credentials_anywhere(monkeypatch, tmp_path):
    """No credentials in the environment nor in AWS's files, as on a fresh machine."""
    import os

    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_s3_errors_finding_the_data_name_the_step_the_path_and_the_fix(s3_as_users_have_it, monkeypatch,
                                                                       tmp_path):
    from stillhouse.core.errors import StepRuntimeError
    from tests.support.local_servers import free_port

    options, fs = s3_as_users_have_it
    put_jsonl(fs, "stillhouse-steps/opts/part-0.jsonl", ROWS)
    no_credentials_anywhere(monkeypatch, tmp_path)
    files = LoadDataFromFileSystem(name="files", data_files="s3://stillhouse-steps/opts/*.jsonl",
                                   storage_options=options)
    disk = LoadDataFromDisk(name="disk", dataset_path="s3://stillhouse-steps/saved",
                            storage_options=options)
    fix = r"Check the path.*storage_options.*credentials.*environment"
    for loader, path in ((files, r"data_files 's3://stillhouse-steps/opts/\*\.jsonl'"),
                         (disk, r"dataset_path 's3://stillhouse-steps/saved'")):
        with pytest.raises(StepRuntimeError, match=rf"'{loader.name}'.*{path}.*NoCredentialsError.*{fix}"):
            loader.outputs  # noqa: B018  (what validation reads)
        with pytest.raises(StepRuntimeError, match=r"NoCredentialsError"):
            loader.signature_extra()  # what the cache signature reads

    nobody = {"key": KEY_ID, "secret": SECRET,
              "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_port()}"},
              "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    unreachable = LoadDataFromFileSystem(name="files", data_files="s3://stillhouse-steps/opts/",
                                         storage_options=nobody)
    with pytest.raises(StepRuntimeError, match=rf"'files'.*EndpointConnectionError.*{fix}") as raised:
        unreachable.outputs  # noqa: B018
    assert KEY_ID not in str(raised.value) and SECRET not in str(raised.value)


def test_an_error_message_quoting_a_credential_is_masked():
    from stillhouse.steps._options import hide_credentials, without_secrets

    options = hide_credentials({"key": KEY_ID, "client_kwargs": {"aws_session_token": SESSION},
                                "secret": "s3", "endpoint_url": "http://e"})
    quoted = f"denied for {KEY_ID} with {SESSION} at http://e"
    assert without_secrets(quoted, options) == "denied for ********** with ********** at http://e"
