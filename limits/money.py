"""Money as integer micro-USD: the implementation is `tollway.config.money`, at the bottom
of the layers (the config parses amounts with it); re-exported here for the metering code."""

from tollway.config.money import MICRO as MICRO
from tollway.config.money import div_half_up as div_half_up
from tollway.config.money import format_usd as format_usd
from tollway.config.money import parse_usd as parse_usd
