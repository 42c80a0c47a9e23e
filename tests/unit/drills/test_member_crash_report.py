"""The member-crash drill's report: its verdict and the lines a student reads (no broker)."""

from lab_kit.drills.member_crash import MemberCrashReport, MemberCrashSettings


def _report(guarantee: str, duplicates: int) -> MemberCrashReport:
    return MemberCrashReport(
        settings=MemberCrashSettings(guarantee=guarantee, leader_kill_s=None),
        topic_prefix="drill.member-crash.x.", submitted=4000, posts_lost=0, posts_duplicates=0,
        posts_out_of_order=0, results_missing=0, results_duplicates=duplicates,
        results_out_of_order=0, uncommitted_extra=22, member_killed=4242,
        member_killed_at_s=4.0, leader_killed=None, leader_killed_at_s=None,
        results_complete_after_s=2.5,
        survivor={"transactions": 11, "aborts": 0, "rebalances": 3, "commit_failures": 1})


def test_duplicates_fail_exactly_once_and_not_at_least_once():
    assert _report("at-least-once", 48).ok
    assert not _report("exactly-once", 48).ok
    assert _report("exactly-once", 0).ok


def test_summary_says_where_its_clock_starts_and_what_the_extra_records_are():
    lines = _report("exactly-once", 0).summary().splitlines()
    assert lines[0] == "drill member-crash (exactly-once, kafka-python): OK"
    assert lines[3].endswith("every post had its result 2.5 s after the producer had flushed "
                             "(the load over, its spool drained)")
    # re-processed work is visible to both readers: it never makes "more records"
    assert lines[4] == ("  results, read_uncommitted: 22 more records (of transactions that "
                        "were aborted or are still open)")
    assert lines[5].endswith("rebalances 3, commit failures 1")
