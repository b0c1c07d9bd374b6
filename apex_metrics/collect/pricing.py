"""The cost of a model call from the ``genai-prices`` package (its bundled price snapshot: no
network), for spans that do not carry ``apex.cost_usd``.

The provider is ``gen_ai.provider.name`` (or the older ``gen_ai.system``), mapped from the
OpenTelemetry names to genai-prices' provider ids; when genai-prices does not know the provider,
the model alone is matched. A call whose model is missing or unknown costs 0 and is counted.
Prices are looked up at the call's start time, to the minute (prices change over time).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

import genai_prices

log = logging.getLogger("apex_metrics.collect")

# OpenTelemetry GenAI semantic conventions (gen_ai.provider.name) -> genai-prices provider id.
PROVIDER_IDS: Final = {
    "aws.bedrock": "aws",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "mistral_ai": "mistral",
    "x_ai": "x-ai",
}
NS_PER_MINUTE: Final = 60 * 1_000_000_000


MTOK: Final = Decimal(1_000_000)
_EXACT: Final = "exact"  # tiered prices: every call goes to genai-prices


class Pricer:
    """Prices calls through genai-prices, fast.

    A price table without tiers is affine in the token counts: genai-prices is asked for three
    points per model and minute (0, 1M input, 1M output tokens) and every call is priced from
    them. A tiered table (the rate depends on the prompt size) sends every call to genai-prices,
    remembering the last ``cache_size`` of them.
    """

    def __init__(self, cache_size: int = 65536) -> None:
        self._lines: dict[
            tuple[str, str | None, int], tuple[Decimal, Decimal, Decimal] | str | None
        ] = {}
        self._cache: OrderedDict[tuple[str, str | None, int, int, int], Decimal | None] = (
            OrderedDict()
        )
        self._cache_size = cache_size

    def __call__(
        self, model: str | None, provider: str | None, tokens_in: int, tokens_out: int, start: int
    ) -> Decimal | None:
        if not model:
            return None
        minute = start // NS_PER_MINUTE
        key = (model, provider, minute)
        if key not in self._lines:
            if len(self._lines) > self._cache_size:
                self._lines.clear()
            self._lines[key] = self._line(model, provider, minute * 60)
        line = self._lines[key]
        if line is None:
            return None
        if isinstance(line, tuple):
            fixed, per_in, per_out = line
            return fixed + per_in * tokens_in + per_out * tokens_out
        return self._exact(model, provider, tokens_in, tokens_out, minute)

    def _line(
        self, model: str, provider: str | None, at: int
    ) -> tuple[Decimal, Decimal, Decimal] | str | None:
        zero = calculate(model, provider, 0, 0, at)
        if zero is None:
            return None
        prices = vars(zero.model_price).values()
        if any(isinstance(p, genai_prices.types.TieredPrices) for p in prices):
            return _EXACT
        fixed = zero.total_price
        per_in = calculate(model, provider, 1_000_000, 0, at)
        per_out = calculate(model, provider, 0, 1_000_000, at)
        if per_in is None or per_out is None:
            return _EXACT
        return fixed, (per_in.total_price - fixed) / MTOK, (per_out.total_price - fixed) / MTOK

    def _exact(
        self, model: str, provider: str | None, tokens_in: int, tokens_out: int, minute: int
    ) -> Decimal | None:
        key = (model, provider, tokens_in, tokens_out, minute)
        cache = self._cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        cost = price(model, provider, tokens_in, tokens_out, minute * 60)
        cache[key] = cost
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return cost


def price(
    model: str, provider: str | None, tokens_in: int, tokens_out: int, at_seconds: int
) -> Decimal | None:
    """The total price in USD from genai-prices, or None when it does not know the model."""
    result = calculate(model, provider, tokens_in, tokens_out, at_seconds)
    return None if result is None else result.total_price


def calculate(
    model: str, provider: str | None, tokens_in: int, tokens_out: int, at_seconds: int
) -> genai_prices.types.PriceCalculation | None:
    usage = genai_prices.Usage(input_tokens=tokens_in, output_tokens=tokens_out)
    when = datetime.fromtimestamp(at_seconds, UTC)
    provider_id = PROVIDER_IDS.get(provider, provider) if provider else None
    attempts = [provider_id, None] if provider_id else [None]
    for candidate in attempts:
        try:
            return genai_prices.calc_price(
                usage, model, provider_id=candidate, genai_request_timestamp=when
            )
        except LookupError:
            continue
        except Exception as exc:  # a price table the package cannot apply: count as unknown
            log.warning("genai-prices failed on model %r (%s): %s", model, provider, exc)
            return None
    return None
