"""What serves a feed that the model cannot: before the first model, or a history too short for it.

HAR fitted once on the first histories a worker sees is fitted on whatever a fresh stack has,
often a handful of bars: its regression is then degenerate and it forecasts one constant for ever
(the demo served 522 for every bar). So this baseline is refitted on the live histories every
``refit_every`` boundaries in which it served, HAR only serves feeds with at least
``min_har_bars`` bars, and shorter feeds get an EWMA of log volume, which is sensible from the
first bar on (with one bar it is the naive forecast). Each forecast names the baseline used.
"""

from __future__ import annotations

from collections.abc import Sequence

from forecaster.baselines import Ewma, Har
from forecaster.features import HAR_HISTORY
from forecaster.frame import BarFrame
from forecaster.horizons import Horizons
from forecaster.predictor import Predictor, baseline_predictor

REFIT_EVERY = 60
"""Boundaries served between two refits (an hour of 1-minute bars)."""
MIN_HAR_BARS = 240
"""Fewer bars than this fit HAR's eight regressors and per-minute profile to noise."""
MAX_FIT_FEEDS = 100
"""Feeds a refit reads (the longest first): it runs beside the event loop, keep it short.
HAR uses its global profile for the others. Shared by the live workers of a group (``fit_feeds``)."""


class FallbackBaseline:
    """HAR for long enough histories, EWMA for the rest; refitted on what the worker holds."""

    def __init__(self, *, refit_every: int = REFIT_EVERY, min_har_bars: int = MIN_HAR_BARS,
                 max_fit_feeds: int = MAX_FIT_FEEDS, horizons: Horizons | None = None) -> None:
        # The model's horizons: HAR is then fitted direct per target (forecaster/baselines.py),
        # so a feed without a model still gets every horizon and window (without quantiles).
        self.horizons = horizons if horizons is not None and horizons.multi else None
        self.refit_every = refit_every
        self.min_har_bars = min_har_bars
        self.max_fit_feeds = max_fit_feeds
        self.har: Predictor | None = None
        self.ewma: Predictor = baseline_predictor("ewma", fitted=Ewma())
        self.fits = 0
        self.fitted_feeds = 0  # feeds the last refit read
        self._served_since_fit = refit_every  # the first boundary served fits at once

    @property
    def look_back(self) -> int:
        """Bars worth keeping per feed: HAR's trailing day, whether or not HAR is fitted yet."""
        return HAR_HISTORY

    def fit_feeds(self, workers: int) -> int:
        """Feeds one refit reads when ``workers`` live workers split the feeds: ``max_fit_feeds``
        between them, so a group refits as many feeds an hour as one worker does. Each worker
        fitting its own ``max_fit_feeds`` made the fallback's refits most of what a second worker
        added to the group's CPU (200 feeds: 100 + 67 feeds fitted instead of 100, about 1.7 ms
        of CPU per feed; benchmarks/scale.py)."""
        return -(-self.max_fit_feeds // max(1, workers))

    def choose(self, length: int) -> Predictor:
        """The baseline for a history of ``length`` bars."""
        if self.har is not None and length >= self.min_har_bars:
            return self.har
        return self.ewma

    def served(self) -> None:
        """Count a boundary in which this fallback forecast at least one feed."""
        self._served_since_fit += 1

    @property
    def refit_due(self) -> bool:
        return self._served_since_fit >= self.refit_every

    def too_narrow(self, feeds: int, workers: int) -> bool:
        """The last fit read less than half of what a boundary of ``feeds`` would give it now: it
        is refitted before that boundary is forecast, not an hour later. The first fit is made on
        the first boundary a worker serves, and a worker of a pool that starts with the others may
        get one feed's event of it (the shards are not split yet): HAR fitted on one feed's 300
        bars took its horizons more than ten times above some other feeds' busiest bar of the day,
        and the guard put the naive forecast in their place for the hour (benchmarks/scale.py, two
        workers on 1000 feeds: 5,007-7,933 forecasts guarded in 100 boundaries, none after this)."""
        return self.fitted_feeds < min(self.fit_feeds(workers), feeds) // 2

    def refit(self, histories: Sequence[tuple[str, BarFrame]]) -> None:
        """Fit EWMA and HAR on the longest of ``histories`` (blocking: run it beside the loop)."""
        self._served_since_fit = 0
        chosen = sorted(histories, key=lambda kf: len(kf[1]), reverse=True)[: self.max_fit_feeds]
        self.fitted_feeds = len(chosen)
        if not chosen:
            return
        ewma = Ewma()
        # EWMA picks its decay on positions past its span; a few feeds are plenty for one number.
        ewma.fit(chosen[:10])
        self.ewma = baseline_predictor("ewma", fitted=ewma)
        long_enough = [(k, f) for k, f in chosen if len(f) >= self.min_har_bars]
        if long_enough:
            interval = long_enough[0][1].interval_ms
            har = Har(interval_ms=interval)
            if self.horizons is not None:
                direct = Har(interval_ms=interval, horizon_targets=self.horizons.targets, spec=self.horizons)
                try:
                    direct.fit(long_enough)
                    har = direct
                except ValueError:  # histories too short for the farthest window: next bar only
                    har.fit(long_enough)
            else:
                har.fit(long_enough)
            self.har = baseline_predictor("har", fitted=har)
        self.fits += 1
