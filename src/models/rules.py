"""Market-basket analysis: a sparse basket matrix, frequent itemsets and association rules.

Baskets are orders; items are products (``level="product"``) or their categories
(``level="category"``). Everything follows the conventions of R's ``arules`` (Hahsler, Gruen
and Hornik 2005), so published results reproduce exactly:

* the *support* of an itemset is the share of **all** baskets that hold it (single-item
  baskets included); thresholds are inclusive (``support >= min_support``,
  ``confidence >= min_confidence``), with a tolerance of :data:`TIE_EPS` so that floating-point
  ties (e.g. 8 / 10 against 0.8) count;
* a rule ``A => {c}`` has exactly one item on the right-hand side; its *length* is the number of
  items in ``A + {c}``; ``min_len`` / ``max_len`` bound it (arules: ``minlen = 1``, so rules
  with an empty left-hand side ``{} => {c}`` appear when ``support(c) >= min_confidence``;
  ``maxlen = 10``);
* metrics: ``support = s(A+c)``, ``confidence = s(A+c) / s(A)``, ``lift = confidence / s(c)``,
  ``leverage = s(A+c) - s(A) s(c)``, ``conviction = (1 - s(c)) / (1 - confidence)`` (``inf``
  when the confidence is 1). Confidence and lift are computed from integer counts, so a rule
  seen in 8 of the 10 baskets of its antecedent has confidence exactly ``0.8``.

Memory
------
``mlxtend``'s usual path one-hot encodes every basket densely (``TransactionEncoder``) and its
``fpgrowth`` / ``apriori`` densify a sparse frame again to count items; at 3.8 million baskets
x 5,000 products that is 19 GB per copy. Here:

1. the basket matrix is a ``scipy.sparse`` CSR matrix of booleans built straight from the order
   lines (one byte per basket-item pair plus a 4-byte index);
2. itemsets of size 1 are column sums, itemsets of size 2 come from the sparse product
   ``X.T @ X`` restricted to the frequent items and to baskets holding at least two of them
   (an item below the minimum support is in no frequent itemset);
3. only for itemsets of 3 or more items is mlxtend called (``fpgrowth`` by default,
   ``apriori`` with ``low_memory=True`` on request), on a reduced dense matrix: the items that
   belong to a frequent pair, and the baskets holding at least 3 of them (every frequent
   itemset of size >= 3 lives there, with the same count). The minimum support is rescaled to
   the reduced row count so that mlxtend's count threshold equals ours; supports are converted
   back to the full basket count. When that reduced matrix would exceed ``max_dense_bytes``,
   it is split into per-item projections (the baskets containing item ``i`` and, as columns,
   the more frequent items forming a frequent pair with ``i``: FP-growth's conditional
   databases), each mined on its own, so memory stays bounded by the largest projection.

The result equals plain mlxtend on the dense one-hot frame itemset for itemset, support for
support (tested on Groceries).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from crmkit.errors import ConfigError, DataContractError

__all__ = [
    "TIE_EPS",
    "ITEMSET_COLUMNS",
    "RULE_COLUMNS",
    "BasketMatrix",
    "RuleArrays",
    "basket_matrix",
    "min_count",
    "frequent_itemsets",
    "association_rules",
    "AssociationRules",
    "rules_table",
    "itemsets_table",
    "plot_rules",
]

#: Tolerance of the inclusive thresholds (``value >= threshold - TIE_EPS``).
TIE_EPS: float = 1e-9
#: Columns of :func:`frequent_itemsets`.
ITEMSET_COLUMNS: tuple[str, ...] = ("itemsets", "support", "count", "length")
#: Columns of :func:`association_rules` (``antecedents`` / ``consequents`` are lists of labels).
RULE_COLUMNS: tuple[str, ...] = (
    "antecedents",
    "consequents",
    "antecedent_support",
    "consequent_support",
    "support",
    "confidence",
    "lift",
    "leverage",
    "conviction",
    "count",
    "length",
)

Level = Literal["product", "category"]
Algorithm = Literal["fpgrowth", "apriori"]
_DEFAULT_DENSE_BYTES = 256 * 2**20


# --------------------------------------------------------------------------------------------
# the basket matrix


@dataclass(frozen=True, eq=False)
class BasketMatrix:
    """Baskets x items as a sparse boolean matrix.

    Attributes
    ----------
    matrix
        ``scipy.sparse.csr_matrix`` of ``bool``, one row per basket, one column per item, sorted
        indices and no duplicate entries.
    items
        Item labels (text), sorted; column ``j`` is ``items[j]``.
    baskets
        Basket ids (``order_id``), row ``i`` is ``baskets[i]``.
    level
        ``"product"`` or ``"category"``.
    """

    matrix: sp.csr_matrix
    items: pd.Index
    baskets: pd.Index
    level: str = "product"

    @property
    def n_baskets(self) -> int:
        """Number of baskets (the support denominator)."""
        return int(self.matrix.shape[0])

    @property
    def n_items(self) -> int:
        """Number of distinct items."""
        return int(self.matrix.shape[1])

    def item_counts(self) -> np.ndarray:
        """Number of baskets holding each item (int64, in column order)."""
        return np.bincount(self.matrix.indices, minlength=self.n_items).astype(np.int64)

    def basket_sizes(self) -> np.ndarray:
        """Number of distinct items in each basket."""
        return np.diff(self.matrix.indptr).astype(np.int64)


def _factorize_sorted(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes of ``values`` with the uniques sorted (codes independent of row order)."""
    codes, uniq = pd.factorize(values, sort=False)
    uniq = pd.Index(uniq, dtype="str")
    order = np.argsort(uniq.to_numpy(dtype=object), kind="stable")
    remap = np.empty(len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[codes].astype(np.int32, copy=False), uniq[order]


def _from_lists(baskets: Iterable[Iterable[Any]]) -> pd.DataFrame:
    ids, items = [], []
    for i, basket in enumerate(baskets):
        for item in basket:
            ids.append(f"B{i + 1}")
            items.append(str(item))
    return pd.DataFrame({"order_id": ids, "product_id": items}, dtype="str")


def basket_matrix(
    data: Any,
    *,
    level: Level = "product",
    basket_column: str = "order_id",
) -> BasketMatrix:
    """Build the sparse basket matrix from order lines.

    Parameters
    ----------
    data
        Cleaned order lines (DataFrame with ``order_id`` and ``product_id``, or ``category`` for
        ``level="category"``; the long frame of :func:`crmkit.data.io.load_baskets` works too),
        :class:`~crmkit.data.io.RawLines`, or a sequence of baskets (each a sequence of item
        labels). Lines with ``quantity <= 0`` (returns kept as negative lines) and lines
        without an item are not purchases and are left out.
    level
        ``"product"``: items are ``product_id``; ``"category"``: items are ``category``.
    basket_column
        Column naming the basket (default ``order_id``).

    Returns
    -------
    BasketMatrix

    Raises
    ------
    DataContractError
        Order-level logs (no ``product_id``), a missing ``category`` column for
        ``level="category"``, or no basket at all.
    """
    if level not in ("product", "category"):
        raise ConfigError(f"level must be 'product' or 'category', got {level!r}")
    if isinstance(data, BasketMatrix):
        return data
    if hasattr(data, "frame") and hasattr(data, "level"):  # RawLines
        if data.level != "product":
            raise DataContractError(
                "the lines are an order-level log (no product column); basket rules and "
                "recommendations need products and are skipped",
                column="product_id",
                rule="order_level_log",
            )
        data = data.frame
    if not isinstance(data, pd.DataFrame):
        data = _from_lists(data)
    item_col = "product_id" if level == "product" else "category"
    if "product_id" not in data.columns and level == "product":
        raise DataContractError(
            "the lines have no product_id: an order-level log; basket rules and "
            "recommendations need products and are skipped",
            column="product_id",
            rule="order_level_log",
        )
    for col in (basket_column, item_col):
        if col not in data.columns:
            raise DataContractError(
                f"basket analysis at level {level!r} needs the column {col!r}",
                column=col,
                rule="required_column",
            )
    keep = data[item_col].notna().to_numpy() & data[basket_column].notna().to_numpy()
    if "quantity" in data.columns:
        keep &= data["quantity"].to_numpy(dtype=np.float64, na_value=0.0) > 0
    frame = data if keep.all() else data.loc[keep]
    if frame.empty:
        raise DataContractError("no basket with an item to analyse", rule="empty_window")
    bcode, bask = pd.factorize(frame[basket_column], sort=False)
    icode, items = _factorize_sorted(frame[item_col].astype("str"))
    n_b, n_i = len(bask), len(items)
    ones = np.ones(len(bcode), dtype=bool)
    mat = sp.csr_matrix((ones, (bcode, icode)), shape=(n_b, n_i))
    mat.sum_duplicates()
    mat.data[:] = True
    mat.sort_indices()
    return BasketMatrix(mat, items, pd.Index(bask, name=basket_column), level)


# --------------------------------------------------------------------------------------------
# frequent itemsets


@dataclass(frozen=True, eq=False)
class _Itemsets:
    """Frequent itemsets as item codes: ``codes[i, :length[i]]`` ascending, ``-1`` padding."""

    codes: np.ndarray
    counts: np.ndarray
    lengths: np.ndarray
    n_baskets: int

    def of_length(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.lengths == k
        return self.codes[m, :k], self.counts[m]


def min_count(min_support: float, n_baskets: int) -> int:
    """The smallest basket count whose support reaches ``min_support`` (inclusive, ties by
    :data:`TIE_EPS`)."""
    return max(1, math.ceil(min_support * n_baskets - TIE_EPS * max(n_baskets, 1)))


def _import_mlxtend():
    # mlxtend's fpcommon sets warnings.simplefilter("always", DeprecationWarning) on import;
    # keep that process-wide side effect out of crmkit users' sessions.
    with warnings.catch_warnings():
        from mlxtend.frequent_patterns import apriori, fpgrowth
    return fpgrowth, apriori


def _mlxtend_mine(
    dense: np.ndarray, mincount: int, max_len: int | None, algorithm: Algorithm
) -> list[tuple[tuple[int, ...], int]]:
    """Frequent itemsets of a dense boolean matrix with mlxtend, as ``(column tuple, count)``
    with counts ``>= mincount``."""
    n = dense.shape[0]
    if n < mincount or dense.shape[1] == 0:
        return []
    fpgrowth, apriori = _import_mlxtend()
    ms = (
        mincount - 0.5
    ) / n  # mlxtend: ceil(ms * n) == mincount and sup / n >= ms <=> sup >= mincount
    df = pd.DataFrame(dense, columns=range(dense.shape[1]), copy=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if algorithm == "fpgrowth":
            res = fpgrowth(df, min_support=ms, max_len=max_len)
        else:
            res = apriori(df, min_support=ms, max_len=max_len, low_memory=True)
    out = []
    for s, iset in zip(res["support"].to_numpy(), res["itemsets"]):
        c = int(round(s * n))
        if c >= mincount:
            out.append((tuple(sorted(int(i) for i in iset)), c))
    return out


def _mine(
    X: sp.csr_matrix,
    mincount: int,
    max_len: int,
    algorithm: Algorithm,
    max_dense_bytes: int,
) -> _Itemsets:
    n_b, n_i = X.shape
    counts1 = np.bincount(X.indices, minlength=n_i).astype(np.int64)
    f1 = np.flatnonzero(counts1 >= mincount)
    rows: list[tuple[tuple[int, ...], int]] = []
    codes_k: list[np.ndarray] = [f1.reshape(-1, 1)]
    cnts_k: list[np.ndarray] = [counts1[f1]]
    if max_len >= 2 and len(f1) >= 2:
        Xf = X[:, f1]
        sizes = np.diff(Xf.indptr)
        X2 = Xf[sizes >= 2]
        if X2.shape[0]:
            X2i = X2.astype(np.int32)
            C = sp.triu(X2i.T @ X2i, k=1).tocoo()
            m = C.data >= mincount
            pr, pc, pcnt = f1[C.row[m]], f1[C.col[m]], C.data[m].astype(np.int64)
            pairs = np.sort(np.column_stack([pr, pc]), axis=1)
            codes_k.append(pairs)
            cnts_k.append(pcnt)
            if max_len >= 3 and len(pairs) >= 3:
                rows = _mine_large(X, pairs, counts1, mincount, max_len, algorithm, max_dense_bytes)
    width = max([len(codes_k)] + [len(t) for t, _ in rows])
    parts, cparts = [], []
    for arr, cnt in zip(codes_k, cnts_k):
        pad = np.full((len(arr), width), -1, dtype=np.int32)
        pad[:, : arr.shape[1]] = arr
        parts.append(pad)
        cparts.append(cnt)
    if rows:
        pad = np.full((len(rows), width), -1, dtype=np.int32)
        for i, (t, _) in enumerate(rows):
            pad[i, : len(t)] = t
        parts.append(pad)
        cparts.append(np.array([c for _, c in rows], dtype=np.int64))
    codes = np.concatenate(parts) if parts else np.empty((0, width), np.int32)
    cnts = np.concatenate(cparts) if cparts else np.empty(0, np.int64)
    lengths = (codes >= 0).sum(axis=1).astype(np.int64)
    # canonical order: length, support descending, codes
    keys = [codes[:, j] for j in range(codes.shape[1] - 1, -1, -1)]
    order = np.lexsort([*keys, -cnts, lengths])
    return _Itemsets(codes[order], cnts[order], lengths[order], n_b)


def _mine_large(
    X: sp.csr_matrix,
    pairs: np.ndarray,
    counts1: np.ndarray,
    mincount: int,
    max_len: int,
    algorithm: Algorithm,
    max_dense_bytes: int,
) -> list[tuple[tuple[int, ...], int]]:
    """Itemsets of 3+ items (see the module docstring), with original item codes."""
    items = np.unique(pairs)
    Xp = X[:, items]
    rows = np.diff(Xp.indptr) >= 3
    n3 = int(rows.sum())
    if n3 < mincount:
        return []
    out: list[tuple[tuple[int, ...], int]] = []
    if n3 * len(items) <= max_dense_bytes:
        dense = Xp[rows].toarray()
        for t, c in _mlxtend_mine(dense, mincount, max_len, algorithm):
            if len(t) >= 3:
                out.append((tuple(int(items[i]) for i in t), c))
        return out
    # per-item projections: item i with its frequent-pair partners that rank after it
    rank = np.empty(len(counts1), dtype=np.int64)
    order = np.lexsort((np.arange(len(counts1)), counts1))
    rank[order] = np.arange(len(counts1))
    a, b = pairs[:, 0], pairs[:, 1]
    lo = np.where(rank[a] < rank[b], a, b)
    hi = np.where(rank[a] < rank[b], b, a)
    srt = np.argsort(lo, kind="stable")
    lo, hi = lo[srt], hi[srt]
    Xc = X.tocsc()
    starts = np.flatnonzero(np.r_[True, lo[1:] != lo[:-1]])
    ends = np.r_[starts[1:], len(lo)]
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        i = int(lo[s])
        partners = np.sort(hi[s:e])
        brows = Xc.indices[Xc.indptr[i] : Xc.indptr[i + 1]]
        sub = X[brows][:, partners]
        keep = np.diff(sub.indptr) >= 2
        if keep.sum() < mincount:
            continue
        dense = sub[keep].toarray()
        for t, c in _mlxtend_mine(dense, mincount, max_len - 1, algorithm):
            if len(t) >= 2:
                out.append((tuple(sorted([i, *(int(partners[j]) for j in t)])), c))
    return out


def _check_support(min_support: float) -> None:
    if not (isinstance(min_support, int | float) and 0.0 < float(min_support) <= 1.0):
        raise ConfigError(f"min_support must be in (0, 1], got {min_support!r}")


def _check_len(max_len: int, min_len: int = 1) -> None:
    if isinstance(max_len, bool) or not isinstance(max_len, int | np.integer) or max_len < 1:
        raise ConfigError(f"max_len must be an integer >= 1, got {max_len!r}")
    if isinstance(min_len, bool) or not isinstance(min_len, int | np.integer) or min_len < 1:
        raise ConfigError(f"min_len must be an integer >= 1, got {min_len!r}")


def _mine_baskets(
    baskets: BasketMatrix,
    min_support: float,
    max_len: int,
    algorithm: Algorithm,
    max_dense_bytes: int | None,
) -> _Itemsets:
    _check_support(min_support)
    _check_len(max_len)
    if algorithm not in ("fpgrowth", "apriori"):
        raise ConfigError(f"algorithm must be 'fpgrowth' or 'apriori', got {algorithm!r}")
    mc = min_count(float(min_support), baskets.n_baskets)
    limit = _DEFAULT_DENSE_BYTES if max_dense_bytes is None else int(max_dense_bytes)
    return _mine(baskets.matrix, mc, int(max_len), algorithm, limit)


def _labels(items: pd.Index, codes: np.ndarray) -> list[list[str]]:
    lab = items.to_numpy(dtype=object)
    return [[lab[c] for c in row if c >= 0] for row in codes]


def _itemsets_frame(isets: _Itemsets, items: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "itemsets": pd.Series(_labels(items, isets.codes), dtype=object),
            "support": isets.counts / max(isets.n_baskets, 1),
            "count": isets.counts.astype(np.int64),
            "length": isets.lengths.astype(np.int64),
        },
        columns=list(ITEMSET_COLUMNS),
    )


def frequent_itemsets(
    baskets: BasketMatrix | Any,
    min_support: float = 0.001,
    *,
    max_len: int = 10,
    algorithm: Algorithm = "fpgrowth",
    level: Level = "product",
    max_dense_bytes: int | None = None,
) -> pd.DataFrame:
    """Frequent itemsets (support ``>= min_support``) of up to ``max_len`` items.

    Parameters
    ----------
    baskets
        A :class:`BasketMatrix` or anything :func:`basket_matrix` accepts.
    min_support
        Minimum share of baskets, inclusive.
    max_len
        Largest itemset size (arules default 10).
    algorithm
        ``"fpgrowth"`` (default) or ``"apriori"``: mlxtend's miner used for itemsets of 3+
        items (pairs are counted with a sparse matrix product either way).
    level
        Passed to :func:`basket_matrix` when ``baskets`` are lines.
    max_dense_bytes
        Memory budget of the dense matrix handed to mlxtend (default 256 MiB); above it the
        work is split into per-item projections.

    Returns
    -------
    DataFrame
        :data:`ITEMSET_COLUMNS`: ``itemsets`` (list of item labels, sorted), ``support``,
        ``count`` (baskets), ``length``; sorted by length, then support (descending).
    """
    bm = basket_matrix(baskets, level=level)
    isets = _mine_baskets(bm, min_support, max_len, algorithm, max_dense_bytes)
    return _itemsets_frame(isets, bm.items)


# --------------------------------------------------------------------------------------------
# rules


@dataclass(frozen=True, eq=False)
class RuleArrays:
    """Rules as item codes (internal form, used by the recommender).

    ``antecedents[i, :length[i] - 1]`` are the antecedent's item codes (ascending, ``-1``
    padding), ``consequents[i]`` the consequent's code; counts are basket counts.
    """

    antecedents: np.ndarray
    consequents: np.ndarray
    count: np.ndarray
    antecedent_count: np.ndarray
    consequent_count: np.ndarray
    n_baskets: int

    def __len__(self) -> int:
        return len(self.consequents)

    @property
    def antecedent_length(self) -> np.ndarray:
        return (self.antecedents >= 0).sum(axis=1)

    def metrics(self) -> dict[str, np.ndarray]:
        n = float(max(self.n_baskets, 1))
        cnt = self.count.astype(np.float64)
        ac = self.antecedent_count.astype(np.float64)
        cc = self.consequent_count.astype(np.float64)
        s, sa, sc = cnt / n, ac / n, cc / n
        conf = cnt / ac
        with np.errstate(divide="ignore", invalid="ignore"):
            conviction = np.where(conf >= 1.0, np.inf, (1.0 - sc) / (1.0 - conf))
        return {
            "antecedent_support": sa,
            "consequent_support": sc,
            "support": s,
            "confidence": conf,
            "lift": cnt * n / (ac * cc),
            "leverage": s - sa * sc,
            "conviction": conviction,
        }


def _lookup_counts(table: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Counts of the rows of ``query`` in ``table`` (same width; every query row present)."""
    if table.shape[1] == 1:
        raise AssertionError("single items are looked up directly")
    idx = pd.MultiIndex.from_arrays([table[:, j] for j in range(table.shape[1])])
    q = pd.MultiIndex.from_arrays([query[:, j] for j in range(query.shape[1])])
    pos = idx.get_indexer(q)
    if (pos < 0).any():  # pragma: no cover - every subset of a frequent itemset is frequent
        raise AssertionError("an antecedent of a frequent itemset is missing")
    return counts[pos]


def _codes_of(items: pd.Index, labels: Iterable[str] | None, what: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = [labels] if isinstance(labels, str) else list(labels)
    if not labels:
        return None
    pos = items.get_indexer(pd.Index([str(x) for x in labels], dtype="str"))
    return np.unique(pos[pos >= 0]).astype(np.int32)


def _rule_arrays(
    isets: _Itemsets,
    item_counts: np.ndarray,
    *,
    min_confidence: float,
    min_lift: float,
    min_len: int,
    max_len: int,
    include_antecedents: np.ndarray | None = None,
    exclude_antecedents: np.ndarray | None = None,
    include_consequents: np.ndarray | None = None,
    exclude_consequents: np.ndarray | None = None,
) -> RuleArrays:
    n = isets.n_baskets
    width = max(int(isets.lengths.max(initial=1)) - 1, 1)
    ants, cons, cnt, acnt = [], [], [], []
    if min_len <= 1:  # {} => {c}
        codes1, c1 = isets.of_length(1)
        ants.append(np.full((len(c1), width), -1, dtype=np.int32))
        cons.append(codes1[:, 0].astype(np.int32))
        cnt.append(c1)
        acnt.append(np.full(len(c1), n, dtype=np.int64))
    tables = {k: isets.of_length(k) for k in range(2, int(isets.lengths.max(initial=1)))}
    for k in range(max(2, min_len), min(max_len, int(isets.lengths.max(initial=1))) + 1):
        codes, c = isets.of_length(k)
        if not len(c):
            continue
        for j in range(k):
            a = np.delete(codes, j, axis=1)
            if k == 2:
                ac = item_counts[a[:, 0]]
            else:
                ac = _lookup_counts(tables[k - 1][0], tables[k - 1][1], a)
            pad = np.full((len(c), width), -1, dtype=np.int32)
            pad[:, : k - 1] = a
            ants.append(pad)
            cons.append(codes[:, j].astype(np.int32))
            cnt.append(c)
            acnt.append(ac.astype(np.int64))
    if ants:
        A = np.concatenate(ants)
        Cq = np.concatenate(cons)
        K = np.concatenate(cnt).astype(np.int64)
        AK = np.concatenate(acnt).astype(np.int64)
    else:
        A = np.empty((0, width), np.int32)
        Cq = np.empty(0, np.int32)
        K = AK = np.empty(0, np.int64)
    CK = item_counts[Cq].astype(np.int64) if len(Cq) else np.empty(0, np.int64)
    keep = K / np.maximum(AK, 1) >= min_confidence - TIE_EPS
    if min_lift > 0:
        keep &= K * float(n) / np.maximum(AK * CK, 1) >= min_lift - TIE_EPS
    if include_antecedents is not None:
        keep &= np.isin(A, include_antecedents).any(axis=1)
    if exclude_antecedents is not None:
        keep &= ~np.isin(A, exclude_antecedents).any(axis=1)
    if include_consequents is not None:
        keep &= np.isin(Cq, include_consequents)
    if exclude_consequents is not None:
        keep &= ~np.isin(Cq, exclude_consequents)
    A, Cq, K, AK, CK = A[keep], Cq[keep], K[keep], AK[keep], CK[keep]
    # order: lift, confidence, support (descending), then item codes
    lift = K * float(n) / np.maximum(AK * CK, 1)
    conf = K / np.maximum(AK, 1)
    keys = [Cq, *[A[:, j] for j in range(A.shape[1] - 1, -1, -1)]]
    order = np.lexsort([*keys, -K, -conf, -lift])
    return RuleArrays(A[order], Cq[order], K[order], AK[order], CK[order], n)


def _rules_frame(rules: RuleArrays, items: pd.Index) -> pd.DataFrame:
    lab = items.to_numpy(dtype=object)
    m = rules.metrics()
    return pd.DataFrame(
        {
            "antecedents": pd.Series(_labels(items, rules.antecedents), dtype=object),
            "consequents": pd.Series([[lab[c]] for c in rules.consequents], dtype=object),
            **{k: m[k] for k in RULE_COLUMNS[2:9]},
            "count": rules.count.astype(np.int64),
            "length": (rules.antecedent_length + 1).astype(np.int64),
        },
        columns=list(RULE_COLUMNS),
    )


def association_rules(
    baskets: BasketMatrix | Any,
    min_support: float = 0.001,
    min_confidence: float = 0.5,
    *,
    min_lift: float = 0.0,
    min_len: int = 1,
    max_len: int = 10,
    algorithm: Algorithm = "fpgrowth",
    level: Level = "product",
    include_antecedents: Iterable[str] | None = None,
    exclude_antecedents: Iterable[str] | None = None,
    include_consequents: Iterable[str] | None = None,
    exclude_consequents: Iterable[str] | None = None,
    max_dense_bytes: int | None = None,
) -> pd.DataFrame:
    """Association rules with one item on the right-hand side (arules conventions).

    Parameters
    ----------
    baskets
        A :class:`BasketMatrix` or anything :func:`basket_matrix` accepts.
    min_support, min_confidence, min_lift
        Inclusive thresholds (``>=``, ties within :data:`TIE_EPS` count).
    min_len, max_len
        Bounds on the number of items in a rule (antecedent + consequent); ``min_len=1``
        (arules' default) admits ``{} => {c}`` rules, ``min_len=2`` requires an antecedent.
    algorithm, level, max_dense_bytes
        As :func:`frequent_itemsets`.
    include_antecedents, exclude_antecedents
        Keep only rules whose antecedent holds at least one / none of these items.
    include_consequents, exclude_consequents
        Keep only rules whose consequent is / is not one of these items.

    Returns
    -------
    DataFrame
        :data:`RULE_COLUMNS`, sorted by lift, confidence and support (descending).
    """
    return (
        AssociationRules(
            min_support=min_support,
            min_confidence=min_confidence,
            min_lift=min_lift,
            min_len=min_len,
            max_len=max_len,
            algorithm=algorithm,
            level=level,
            include_antecedents=include_antecedents,
            exclude_antecedents=exclude_antecedents,
            include_consequents=include_consequents,
            exclude_consequents=exclude_consequents,
            max_dense_bytes=max_dense_bytes,
        )
        .fit(baskets)
        .rules_
    )


class AssociationRules:
    """Frequent itemsets and one-consequent association rules of a set of baskets.

    Parameters
    ----------
    min_support
        Minimum itemset / rule support (share of all baskets), inclusive.
    min_confidence
        Minimum rule confidence, inclusive.
    min_lift
        Minimum rule lift, inclusive (0: no filter).
    min_len, max_len
        Bounds on the number of items in an itemset / rule (arules: 1 and 10).
    algorithm
        ``"fpgrowth"`` or ``"apriori"`` (mlxtend's, for itemsets of 3+ items).
    level
        ``"product"`` or ``"category"`` (items of the baskets).
    include_antecedents, exclude_antecedents, include_consequents, exclude_consequents
        Item constraints (see :func:`association_rules`).
    max_dense_bytes
        Memory budget of mlxtend's dense input (default 256 MiB).

    Attributes
    ----------
    baskets_ : BasketMatrix
    itemsets_ : DataFrame
        :data:`ITEMSET_COLUMNS`.
    rules_ : DataFrame
        :data:`RULE_COLUMNS`.
    rule_arrays_ : RuleArrays
        The rules as item codes (columns of ``baskets_``).
    item_support_ : Series
        Support of every item, indexed by label.
    n_baskets_, n_items_, n_multi_item_baskets_ : int
    """

    def __init__(
        self,
        *,
        min_support: float = 0.001,
        min_confidence: float = 0.5,
        min_lift: float = 0.0,
        min_len: int = 1,
        max_len: int = 10,
        algorithm: Algorithm = "fpgrowth",
        level: Level = "product",
        include_antecedents: Iterable[str] | None = None,
        exclude_antecedents: Iterable[str] | None = None,
        include_consequents: Iterable[str] | None = None,
        exclude_consequents: Iterable[str] | None = None,
        max_dense_bytes: int | None = None,
    ) -> None:
        self.min_support = min_support
        self.min_confidence = min_confidence
        self.min_lift = min_lift
        self.min_len = min_len
        self.max_len = max_len
        self.algorithm = algorithm
        self.level = level
        self.include_antecedents = include_antecedents
        self.exclude_antecedents = exclude_antecedents
        self.include_consequents = include_consequents
        self.exclude_consequents = exclude_consequents
        self.max_dense_bytes = max_dense_bytes

    _PARAMS = (
        "min_support",
        "min_confidence",
        "min_lift",
        "min_len",
        "max_len",
        "algorithm",
        "level",
        "include_antecedents",
        "exclude_antecedents",
        "include_consequents",
        "exclude_consequents",
        "max_dense_bytes",
    )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of the estimator (scikit-learn convention)."""
        return {k: getattr(self, k) for k in self._PARAMS}

    def set_params(self, **params: Any) -> AssociationRules:
        """Set parameters (scikit-learn convention)."""
        for k, v in params.items():
            if k not in self._PARAMS:
                raise ConfigError(f"unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._PARAMS[:7])
        return f"AssociationRules({args})"

    def _check(self) -> None:
        _check_support(self.min_support)
        _check_len(self.max_len, self.min_len)
        for name in ("min_confidence",):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= float(v) <= 1.0):
                raise ConfigError(f"{name} must be in [0, 1], got {v!r}")
        if not (isinstance(self.min_lift, int | float) and float(self.min_lift) >= 0.0):
            raise ConfigError(f"min_lift must be >= 0, got {self.min_lift!r}")
        if self.algorithm not in ("fpgrowth", "apriori"):
            raise ConfigError(f"algorithm must be 'fpgrowth' or 'apriori', got {self.algorithm!r}")

    def fit(self, baskets: BasketMatrix | Any) -> AssociationRules:
        """Mine itemsets and rules.

        Parameters
        ----------
        baskets
            A :class:`BasketMatrix` or anything :func:`basket_matrix` accepts.

        Returns
        -------
        self
        """
        self._check()
        bm = basket_matrix(baskets, level=self.level)
        isets = _mine_baskets(
            bm, self.min_support, int(self.max_len), self.algorithm, self.max_dense_bytes
        )
        counts = bm.item_counts()
        ra = _rule_arrays(
            isets,
            counts,
            min_confidence=float(self.min_confidence),
            min_lift=float(self.min_lift),
            min_len=int(self.min_len),
            max_len=int(self.max_len),
            include_antecedents=_codes_of(bm.items, self.include_antecedents, "antecedents"),
            exclude_antecedents=_codes_of(bm.items, self.exclude_antecedents, "antecedents"),
            include_consequents=_codes_of(bm.items, self.include_consequents, "consequents"),
            exclude_consequents=_codes_of(bm.items, self.exclude_consequents, "consequents"),
        )
        self.baskets_ = bm
        self.itemsets_ = _itemsets_frame(isets, bm.items)
        self.rule_arrays_ = ra
        self.rules_ = _rules_frame(ra, bm.items)
        self.item_support_ = pd.Series(counts / max(bm.n_baskets, 1), index=bm.items)
        self.n_baskets_ = bm.n_baskets
        self.n_items_ = bm.n_items
        self.n_multi_item_baskets_ = int((bm.basket_sizes() >= 2).sum())
        return self


# --------------------------------------------------------------------------------------------
# output tables and the plot


def rules_table(rules: pd.DataFrame) -> Any:
    """The rules as a ``pyarrow.Table`` with a fixed schema (``antecedents`` and
    ``consequents`` as ``list<string>``), well-formed even with zero rows."""
    import pyarrow as pa

    cols = {
        c: rules[c] if c in rules.columns else pd.Series([], dtype=object) for c in RULE_COLUMNS
    }
    schema = pa.schema(
        [
            ("antecedents", pa.list_(pa.string())),
            ("consequents", pa.list_(pa.string())),
            *[(c, pa.float64()) for c in RULE_COLUMNS[2:9]],
            ("count", pa.int64()),
            ("length", pa.int64()),
        ]
    )
    arrays = [
        pa.array([list(x) for x in cols["antecedents"]], type=pa.list_(pa.string())),
        pa.array([list(x) for x in cols["consequents"]], type=pa.list_(pa.string())),
        *[
            pa.array(np.asarray(cols[c], dtype=np.float64), type=pa.float64())
            for c in RULE_COLUMNS[2:9]
        ],
        pa.array(np.asarray(cols["count"], dtype=np.int64), type=pa.int64()),
        pa.array(np.asarray(cols["length"], dtype=np.int64), type=pa.int64()),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def itemsets_table(itemsets: pd.DataFrame) -> Any:
    """The itemsets as a ``pyarrow.Table`` (``itemsets`` as ``list<string>``), well-formed even
    with zero rows."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("itemsets", pa.list_(pa.string())),
            ("support", pa.float64()),
            ("count", pa.int64()),
            ("length", pa.int64()),
        ]
    )
    return pa.Table.from_arrays(
        [
            pa.array([list(x) for x in itemsets["itemsets"]], type=pa.list_(pa.string())),
            pa.array(itemsets["support"].to_numpy(dtype=np.float64), type=pa.float64()),
            pa.array(itemsets["count"].to_numpy(dtype=np.int64), type=pa.int64()),
            pa.array(itemsets["length"].to_numpy(dtype=np.int64), type=pa.int64()),
        ],
        schema=schema,
    )


def plot_rules(
    rules: pd.DataFrame,
    ax: Any = None,
    *,
    cmap: str = "viridis",
    max_points: int = 20_000,
    label_top: int = 3,
) -> Any:
    """Support / confidence scatter of rules, coloured by lift.

    Parameters
    ----------
    rules
        Output of :func:`association_rules` (``support``, ``confidence``, ``lift``).
    ax
        Matplotlib Axes to draw on; a new :class:`matplotlib.figure.Figure`'s when ``None``
        (never pyplot's global state).
    cmap
        Colormap of the lift.
    max_points
        Plot at most this many rules (the highest-lift ones) to keep files small.
    label_top
        Annotate this many rules with the highest lift.

    Returns
    -------
    matplotlib.axes.Axes
    """
    for col in ("support", "confidence", "lift"):
        if col not in rules.columns:
            raise DataContractError(
                f"rules need a {col!r} column to plot",
                column=col,
                rule="required_column",
                hint="pass the output of crmkit.models.rules.association_rules",
            )
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.0, 4.8), layout="constrained")
        ax = fig.add_subplot()
    shown = rules
    if len(shown) > max_points:
        shown = shown.nlargest(max_points, "lift")
    ax.set_xlabel("support (share of baskets)")
    ax.set_ylabel("confidence")
    if shown.empty:
        ax.text(0.5, 0.5, "no rules", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("association rules: none")
        return ax
    sc = ax.scatter(
        shown["support"].to_numpy(),
        shown["confidence"].to_numpy(),
        c=shown["lift"].to_numpy(),
        cmap=cmap,
        s=10,
        alpha=0.8,
        linewidths=0,
    )
    ax.set_xscale("log")
    ax.figure.colorbar(sc, ax=ax, label="lift")
    title = f"{len(rules):,} association rules"
    if len(shown) < len(rules):
        title += f" (top {len(shown):,} by lift shown)"
    ax.set_title(title)
    if label_top and "antecedents" in shown.columns:
        for _, r in shown.nlargest(label_top, "lift").iterrows():
            text = _rule_text(r["antecedents"], r["consequents"])
            ax.annotate(text, (r["support"], r["confidence"]), fontsize=7, alpha=0.9)
    return ax


def _rule_text(ants: Sequence[str], cons: Sequence[str], limit: int = 40) -> str:
    a = ", ".join(str(x).strip() for x in ants)
    c = ", ".join(str(x).strip() for x in cons)
    text = f"{{{a}}} => {{{c}}}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
