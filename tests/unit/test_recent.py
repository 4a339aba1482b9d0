"""RecentMap: the bounded in-process memory of the A1111 and Cog dialects."""

from pixelmill.api.recent import RecentMap


def test_the_oldest_set_entry_goes_first_and_setting_again_renews():
    recent: RecentMap[str, int] = RecentMap(2)
    recent.put("a", 1)
    recent.put("b", 2)
    recent.put("a", 3)  # now the newest
    recent.put("c", 4)  # over the limit: "b" (oldest set) goes
    assert (recent.get("a"), recent.get("b"), recent.get("c"), len(recent)) == (3, None, 4, 2)
    assert recent.get("b", 0) == 0
