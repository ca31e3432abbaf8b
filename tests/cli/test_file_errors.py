

def test_ctrl_c_after_ignore_cache_says_to_drop_it():
    import argparse

    from stillhouse.core.cli import _one_line

    plain = _one_line(KeyboardInterrupt(), argparse.Namespace(ignore_cache=False))
    assert plain == "interrupted. Finished work is cached: run the same command again to resume."
    ignoring = _one_line(KeyboardInterrupt(), argparse.Namespace(ignore_cache=True))
    assert "run the command again without --ignore-cache to resume" in ignoring
