"""Business filters and boosts over a catalog snapshot aligned with a model's item rows.

:class:`CatalogView` holds, for every item row of a model vocabulary, what the filters read
(present in the catalog, in stock, price, category path, brand, tags, attributes) as numpy
arrays and code tables, so a request's filters are a few vectorised operations over the
rows instead of a catalog lookup per candidate. The view is patched in place when catalog
rows change. No I/O here: :mod:`sartor.recommend.serving` feeds it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PATH_SEP = " > "
BOOST_FIELDS = ("brand", "category", "tag")
MAX_BOOST = 100.0
# Up to this many categories, MMR reads their pairwise similarity from one table (8 MB at
# most); a catalog with more compares each request's candidates instead.
MAX_SIMILARITY_CATEGORIES = 1024


def category_key(path: Any) -> str | None:
    """A category path compared case- and spacing-insensitively: ``"Home>Kitchen"`` and
    ``"home > kitchen"`` are the same path."""
    if not isinstance(path, str):
        return None
    parts = [p.strip().lower() for p in path.replace("/", ">").split(">")]
    parts = [p for p in parts if p]
    return PATH_SEP.join(parts) if parts else None


def under(path: str | None, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or inside it (whole segments: "A > B" is not under
    "A > Bo")."""
    return path is not None and (path == prefix or path.startswith(prefix + PATH_SEP))


def _norm(value: Any) -> str:
    return str(value).strip().lower()


@dataclass(frozen=True)
class Boost:
    """Multiply the score of items whose ``field`` equals ``value`` by ``factor``.
    ``field`` is ``brand``, ``category`` (path prefix), ``tag`` or ``attributes.<name>``."""

    field: str
    value: str
    factor: float

    @classmethod
    def parse(cls, text: str) -> Boost:
        """``brand:Acme:1.5`` (field, value, factor; the value may itself contain ``:``)."""
        field_name, _, rest = text.partition(":")
        value, _, factor_text = rest.rpartition(":")
        field_name = field_name.strip()
        if not field_name or not value.strip() or not factor_text:
            raise ValueError(f"{text!r}: expected field:value:factor, e.g. brand:Acme:1.5")
        if field_name not in BOOST_FIELDS and not (
            field_name.startswith("attributes.") and len(field_name) > len("attributes.")
        ):
            raise ValueError(f"{text!r}: field must be brand, category, tag or attributes.<name>")
        try:
            factor = float(factor_text)
        except ValueError:
            raise ValueError(f"{text!r}: factor {factor_text!r} is not a number") from None
        if not (0 < factor <= MAX_BOOST) or math.isnan(factor):
            raise ValueError(f"{text!r}: factor must be above 0 and at most {MAX_BOOST:g}")
        return cls(field_name, value.strip(), factor)


@dataclass(frozen=True)
class Filters:
    """What a request filters and boosts, over what its slot filters."""

    exclude: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()  # keep only items under one of these paths
    exclude_categories: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    boosts: tuple[Boost, ...] = ()
    in_stock_only: bool = True

    def key(self) -> tuple[Any, ...]:
        """Hashable, for the list cache."""
        return (
            tuple(sorted(self.exclude)),
            tuple(sorted(self.categories)),
            tuple(sorted(self.exclude_categories)),
            self.min_price,
            self.max_price,
            self.boosts,
            self.in_stock_only,
        )


@dataclass
class CatalogView:
    """Catalog data per item row of one vocabulary (``ids[row]``)."""

    ids: list[str]
    present: np.ndarray  # bool: the item is in the catalog
    in_stock: np.ndarray  # bool
    price: np.ndarray  # float64, NaN when unknown
    category_code: np.ndarray  # int32 into ``categories``; -1 when none
    brand_code: np.ndarray  # int32 into ``brands``; -1 when none
    categories: list[str]  # distinct category keys
    brands: list[str]  # distinct lower-cased brands
    items: list[Mapping[str, Any] | None]  # the catalog document of each row (for display)
    _row_index: dict[str, int] = field(default_factory=dict)
    _category_index: dict[str, int] = field(default_factory=dict)
    _brand_index: dict[str, int] = field(default_factory=dict)
    _memo: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    _levels: tuple[int, np.ndarray, np.ndarray] | None = None
    _similarity: tuple[int, np.ndarray | None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, ids: Sequence[str], catalog: Mapping[str, Mapping[str, Any]]) -> CatalogView:
        n = len(ids)
        view = cls(
            ids=list(ids),
            present=np.zeros(n, dtype=bool),
            in_stock=np.zeros(n, dtype=bool),
            price=np.full(n, np.nan),
            category_code=np.full(n, -1, dtype=np.int32),
            brand_code=np.full(n, -1, dtype=np.int32),
            categories=[],
            brands=[],
            items=[None] * n,
        )
        view._row_index = {item_id: row for row, item_id in enumerate(view.ids)}
        for row, item_id in enumerate(view.ids):
            item = catalog.get(item_id)
            if item is not None:
                view._set(row, item)
        return view

    def patch(self, rows: Mapping[int, Mapping[str, Any] | None]) -> None:
        """Apply changed catalog documents (``None``: the item was deleted)."""
        with self._lock:
            for row, item in rows.items():
                if item is None:
                    self.present[row] = False
                    self.in_stock[row] = False
                    self.price[row] = np.nan
                    self.category_code[row] = -1
                    self.brand_code[row] = -1
                    self.items[row] = None
                else:
                    self._set(row, item)
            self._memo = {}

    def _code(self, value: str | None, table: list[str], index: dict[str, int]) -> int:
        if value is None:
            return -1
        code = index.get(value)
        if code is None:
            code = index[value] = len(table)
            table.append(value)
        return code

    def _set(self, row: int, item: Mapping[str, Any]) -> None:
        self.present[row] = True
        self.in_stock[row] = bool(item.get("inStock", item.get("in_stock", True)))
        price = item.get("price")
        self.price[row] = (
            float(price)
            if isinstance(price, int | float) and not isinstance(price, bool)
            else np.nan
        )
        self.category_code[row] = self._code(
            category_key(item.get("category")), self.categories, self._category_index
        )
        brand = item.get("brand")
        self.brand_code[row] = self._code(
            _norm(brand) if isinstance(brand, str) and brand.strip() else None,
            self.brands,
            self._brand_index,
        )
        self.items[row] = item

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """Rows of the ids this view knows; the others are left out."""
        index = self._row_index
        return np.asarray([index[i] for i in ids if i in index], dtype=np.int64)

    # -- row sets, memoized per catalog state ----------------------------------------------

    def _memoized(
        self, kind: str, value: str
    ) -> tuple[np.ndarray | None, dict[tuple[str, str], np.ndarray]]:
        """The memoized row set, and the memo it belongs to: a result computed while a
        patch replaces the memo goes into the old one, so it can never outlive the patch."""
        memo = self._memo
        return memo.get((kind, value)), memo

    @staticmethod
    def _remember(
        memo: dict[tuple[str, str], np.ndarray], kind: str, value: str, mask: np.ndarray
    ) -> np.ndarray:
        if len(memo) > 256:  # request parameters are open-ended; keep it bounded
            memo.clear()
        memo[(kind, value)] = mask
        return mask

    def available(self, require_catalog: bool, in_stock_only: bool) -> np.ndarray:
        """Bool over rows: in the catalog (when ``require_catalog``) and in stock (when
        ``in_stock_only``), memoized per catalog state (every request starts from it).
        Not to be modified."""
        key = f"{require_catalog:d}{in_stock_only:d}"
        found, memo = self._memoized("available", key)
        if found is not None:
            return found
        mask = self.present.copy() if require_catalog else np.ones(len(self.ids), dtype=bool)
        if in_stock_only:
            # An item missing from the catalog has no stock information: only its absence
            # (require_catalog) can rule it out.
            mask &= self.in_stock | ~self.present
        return self._remember(memo, "available", key, mask)

    def category_levels(self) -> tuple[np.ndarray, np.ndarray]:
        """:func:`sartor.recommend.diversity.level_table` of :attr:`categories` (cached
        while no new category appears)."""
        from sartor.recommend.diversity import level_table

        cached = self._levels
        if cached is None or cached[0] != len(self.categories):
            cached = self._levels = (len(self.categories), *level_table(self.categories))
        return cached[1], cached[2]

    def category_similarity(self) -> np.ndarray | None:
        """:func:`sartor.recommend.diversity.similarity_matrix` of every pair of
        :attr:`categories` (plus "none", the last row), cached while no new
        category appears; None for a catalog with more than
        :data:`MAX_SIMILARITY_CATEGORIES` (MMR then compares its candidates' paths)."""
        from sartor.recommend.diversity import similarity_matrix

        count = len(self.categories)
        cached = self._similarity
        if cached is None or cached[0] != count:
            table = None
            if count <= MAX_SIMILARITY_CATEGORIES:
                table = similarity_matrix(*self.category_levels())
            cached = self._similarity = (count, table)
        return cached[1]

    def under_category(self, prefix: str) -> np.ndarray:
        """Bool over rows: the item's category path is ``prefix`` or below it."""
        key = category_key(prefix) or ""
        found, memo = self._memoized("category", key)
        if found is not None:
            return found
        table = np.zeros(len(self.categories) + 1, dtype=bool)  # last entry: no category
        for code, path in enumerate(self.categories):
            table[code] = under(path, key)
        return self._remember(memo, "category", key, table[self.category_code])

    def with_brand(self, brand: str) -> np.ndarray:
        code = self._brand_index.get(_norm(brand))
        if code is None:
            return np.zeros(len(self.ids), dtype=bool)
        return np.asarray(self.brand_code == code)

    def with_tag(self, tag: str) -> np.ndarray:
        wanted = _norm(tag)
        found, memo = self._memoized("tag", wanted)
        if found is not None:
            return found
        mask = np.fromiter(
            (
                item is not None and any(_norm(t) == wanted for t in (item.get("tags") or ()))
                for item in self.items
            ),
            dtype=bool,
            count=len(self.items),
        )
        return self._remember(memo, "tag", wanted, mask)

    def with_attribute(self, name: str, value: str) -> np.ndarray:
        wanted = _norm(value)
        memo_key = f"{name}\x00{wanted}"
        found, memo = self._memoized("attribute", memo_key)
        if found is not None:
            return found

        def matches(item: Mapping[str, Any] | None) -> bool:
            if item is None:
                return False
            got = (item.get("attributes") or {}).get(name)
            if isinstance(got, list):
                return any(_norm(v) == wanted for v in got)
            return got is not None and _norm(got) == wanted

        mask = np.fromiter((matches(i) for i in self.items), dtype=bool, count=len(self.items))
        return self._remember(memo, "attribute", memo_key, mask)

    def matching(self, boost: Boost) -> np.ndarray:
        if boost.field == "brand":
            return self.with_brand(boost.value)
        if boost.field == "category":
            return self.under_category(boost.value)
        if boost.field == "tag":
            return self.with_tag(boost.value)
        return self.with_attribute(boost.field.removeprefix("attributes."), boost.value)


def allowed_rows(
    view: CatalogView,
    filters: Filters,
    excluded_rows: Iterable[int] | np.ndarray = (),
    *,
    require_catalog: bool = True,
) -> np.ndarray:
    """Bool over the view's rows: True where an item may be recommended.

    ``require_catalog`` leaves out items missing from the catalog (deleted ones); the
    caller turns it off for a workspace without any catalog (items known from events only).
    """
    n = len(view)
    mask = view.available(require_catalog, filters.in_stock_only).copy()
    rows = np.fromiter(excluded_rows, dtype=np.int64)
    if len(rows):
        mask[rows[(rows >= 0) & (rows < n)]] = False
    if filters.exclude:
        mask[view.rows(filters.exclude)] = False
    if filters.categories:
        keep = np.zeros(n, dtype=bool)
        for prefix in filters.categories:
            keep |= view.under_category(prefix)
        mask &= keep
    for prefix in filters.exclude_categories:
        mask &= ~view.under_category(prefix)
    if filters.min_price is not None:
        mask &= view.price >= filters.min_price  # unknown prices (NaN) never qualify
    if filters.max_price is not None:
        mask &= view.price <= filters.max_price
    return mask


def boost_factors(view: CatalogView, boosts: Sequence[Boost], rows: np.ndarray) -> np.ndarray:
    """The product of the factors of the boosts each of ``rows`` matches."""
    factors = np.ones(len(rows))
    for boost in boosts:
        hit = view.matching(boost)[rows]
        factors[hit] *= boost.factor
    return factors
