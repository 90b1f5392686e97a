"""The per-channel statistics rule every layer uses (``deit.core.validation.per_channel``)."""
import pytest

from deit.core.errors import CheckpointError, ConfigError
from deit.core.validation import per_channel


@pytest.mark.parametrize("values, channels, expected", [
    (0.5, 3, (0.5, 0.5, 0.5)),  # one number: replicated
    ([0.2860], 3, (0.286, 0.286, 0.286)),  # grey statistics for an RGB input
    ((0.1, 0.2, 0.3), 3, (0.1, 0.2, 0.3)),  # one per channel: kept
    ([0.5], 1, (0.5,)),
])
def test_one_value_is_replicated_and_one_per_channel_kept(values, channels, expected):
    assert per_channel(values, channels, name="mean") == pytest.approx(expected)


def test_a_count_mismatch_is_an_error_naming_the_setting_or_the_mean_when_asked():
    with pytest.raises(ConfigError, match=r"mean has 3 entries \(0.1, 0.2, 0.3\); expected 1"):
        per_channel((0.1, 0.2, 0.3), 1, name="mean")
    assert per_channel((0.1, 0.2, 0.3), 1, name="mean", mismatch="average") == pytest.approx((0.2,))  # RGB -> grey
    with pytest.raises(CheckpointError, match="preprocessor says no"):
        per_channel((0.1, 0.2), 3, name="image_mean", error=CheckpointError, message="preprocessor says no")


def test_a_standard_deviation_must_be_positive():
    with pytest.raises(ConfigError, match=r"std=\(0.0, 0.0, 0.0\) is invalid; expected every entry > 0"):
        per_channel(0.0, 3, name="std", positive=True)
    assert per_channel(0.25, 3, name="std", positive=True) == (0.25, 0.25, 0.25)
