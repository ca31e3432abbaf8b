

def test_no_resume_hint_after_a_validation_error(tmp_path, caplog):
    from stillhouse.core.errors import PipelineValidationError

    with Pipeline(name="invalid", cache_dir=tmp_path, executor="sync") as pipeline:
        LoadDataFromDicts(data=[{"y": 1}]) >> Slow(name="slow")  # needs column x
    with pytest.raises(PipelineValidationError):
        pipeline.run(progress=False)
    assert "resume" not in caplog.text.lower()


def test_ignore_cache_run_that_stops_names_use_cache_true(tmp_path):
    pipeline = _pipeline(tmp_path, sleep=0.05, executor="threaded")
    stopper = threading.Timer(0.4, pipeline.stop)
    stopper.start()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(progress=False, use_cache=False)
    stopper.cancel()
    assert "run it again with use_cache=True (on the CLI: without --ignore-cache)" in _log(pipeline)
