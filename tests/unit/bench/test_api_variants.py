"""``bench api --variants``: the names it takes, the older ``durable`` among them."""

from __future__ import annotations

import pytest

from lab_kit.bench.api import VARIANTS, parse_variants


def test_no_flag_means_every_variant():
    assert parse_variants(None) == VARIANTS == ("async", "wait-ack", "blocking")


def test_the_older_name_durable_means_wait_ack_and_each_variant_runs_once():
    assert parse_variants("durable, async") == ("wait-ack", "async")
    assert parse_variants("wait-ack,durable") == ("wait-ack",)


@pytest.mark.parametrize("text", ["acked", "async,fast", ",", " "])
def test_an_unknown_or_empty_list_names_the_flag_and_the_choices(text):
    with pytest.raises(ValueError, match=r"--variants: each must be one of async, wait-ack, "
                                         r"blocking"):
        parse_variants(text)
