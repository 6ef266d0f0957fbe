"""conftest's xdist grouping: a test on one of our module- or session-scoped fixtures is marked for one worker, so
pytest-xdist (`--dist loadgroup`, pyproject.toml) builds that fixture once; other tests are left free."""

import pytest


@pytest.fixture(scope="module")
def built_once():
    return object()


@pytest.fixture(scope="module")
def also_built_once():
    return object()


def group_of(request):
    mark = request.node.get_closest_marker("xdist_group")
    return mark.args[0] if mark else None


def test_a_test_on_a_shared_fixture_of_ours_is_grouped_by_it(request, built_once):
    assert group_of(request) == "built_once"


def test_two_shared_fixtures_make_one_group(request, also_built_once, built_once):
    assert group_of(request) == "also_built_once+built_once"


def test_function_fixtures_tiny_weights_and_pytests_own_leave_a_test_free(request, tmp_path, tmp_path_factory,
                                                                          tiny_weights, worker_id):
    assert group_of(request) is None
