"""The `pipelite` command line: where --store goes, a missing store, the status table; and
store arguments that are not paths."""
from __future__ import annotations

import pytest

from pipelite import Pipeline, PipeliteError


@pytest.mark.parametrize("bad, kind", [(12, "int"), (None, "NoneType"), (b"x", "bytes")])
def test_a_store_that_is_not_a_path_is_a_pipelite_error(bad, kind):
    with pytest.raises(PipeliteError, match=f"store must be a path or an fsspec URL string, "
                                            f"not {kind}"):
        Pipeline(store=bad)
