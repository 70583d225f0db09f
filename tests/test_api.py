import importlib

import vebi


def test_public_api_names_resolve_to_functions_not_modules():
    importlib.import_module("vebi.collect")  # a later submodule import must not shadow the function
    importlib.import_module("vebi.interpret")
    for name in vebi.__all__:
        assert getattr(vebi, name) is not None, name
    assert callable(vebi.collect) and callable(vebi.interpret) and callable(vebi.fit_relevance)
    assert vebi.collect.__module__ == "vebi.collect" and vebi.interpret.__module__ == "vebi.interpret"
