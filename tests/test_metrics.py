"Exported dflab.metrics and dflab.report: thresholds are score cuts, AUC ties count half, one threshold end to end."
import json
import numpy as np
import pandas as pd
import pytest
from dflab.core import DflabError
from dflab.metrics import (THRESHOLD_CRITERIA, accuracy_at, average_precision, bootstrap_ci, bootstrap_detection,
                           breakdown, choose_threshold, detection_metrics, eer, pr_points, roc_auc, roc_points)
from dflab.report import write_evaluation

def sig(x): return 1 / (1 + np.exp(-x))

def rates(y, s, t):
    "(FPR, FNR) of the rule score >= t."
    y, s = np.asarray(y), np.asarray(s, float)
    return float((s[y == 0] >= t).mean()), float((s[y == 1] < t).mean())

def data(kind, n0=400, n1=300, seed=0):
    "Scores whose thresholds lie far from their rates: logits around 2..5, or probabilities with a cut near 0.8."
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    if kind == 'logit': s = np.r_[rng.normal(2, 1, n0), rng.normal(4.5, 1.2, n1)]
    else: s = sig(np.r_[rng.normal(0, 1, n0), rng.normal(3, 1, n1)])
    return y, s

# --- choose_threshold returns a score cut, for every criterion -----------------------------------------------------

@pytest.mark.parametrize('kind', ['logit', 'prob'])
@pytest.mark.parametrize('criterion', THRESHOLD_CRITERIA)
def test_threshold_is_a_score_value(kind, criterion):
    y, s = data(kind)
    t = choose_threshold(y, s, criterion)
    assert t in s, f"{criterion}: {t} is not one of the scores"
    fpr, fnr = rates(y, s, t)
    assert fpr < 0.5 and fnr < 0.5, f"{criterion}: threshold {t} gives FPR {fpr}, FNR {fnr}"   # a rate: ~(1, 0)

@pytest.mark.parametrize('kind', ['logit', 'prob'])
def test_eer_threshold_gives_equal_error_rates(kind):
    y, s = data(kind)
    rate, cut = eer(y, s)
    assert abs(cut - rate) > 0.3, (rate, cut)            # the data keep the two apart
    t = choose_threshold(y, s, 'eer')
    assert t == cut
    fpr, fnr = rates(y, s, t)
    step = 1 / 400 + 1 / 300                             # no ties: one ROC step moves one image
    assert abs(fpr - fnr) <= step and abs(fpr - rate) <= step and abs(fnr - rate) <= step, (rate, t, fpr, fnr)

@pytest.mark.parametrize('kind', ['logit', 'prob'])
def test_balanced_and_accuracy_thresholds_are_optimal_cuts(kind):
    y, s = data(kind)
    cuts = np.unique(s)
    bal = lambda t: 1 - sum(rates(y, s, t)) / 2
    acc = lambda t: float(((s >= t) == y).mean())
    assert bal(choose_threshold(y, s, 'balanced')) == pytest.approx(max(bal(c) for c in cuts), abs=1e-12)
    assert acc(choose_threshold(y, s, 'accuracy')) == pytest.approx(max(acc(c) for c in cuts), abs=1e-12)

def test_unknown_criterion_and_single_class():
    with pytest.raises(DflabError, match='unknown threshold criterion'): choose_threshold([0, 1], [.1, .9], 'magic')
    for c in THRESHOLD_CRITERIA:
        with pytest.raises(DflabError, match='needs both real and fake'): choose_threshold([1, 1], [.1, .9], c)

# --- roc_auc: Mann-Whitney, a tie counts half ----------------------------------------------------------------------

def auc_pairs(y, s):
    y, s = np.asarray(y), np.asarray(s, float)
    d = s[y == 1][:, None] - s[y == 0][None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())

@pytest.mark.parametrize('y', [[0, 1], [1, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1, 1]])
def test_all_tied_scores_give_chance(y):
    assert roc_auc(y, np.full(len(y), 0.3)) == 0.5

@pytest.mark.parametrize('seed', range(5))
def test_auc_with_many_ties_is_the_pairwise_count_in_any_order(seed):
    rng = np.random.default_rng(seed)
    n = 200; y = rng.integers(0, 2, n); y[:2] = [0, 1]
    s = rng.integers(0, 4, n) / 4 + 0.25 * y * (rng.random(n) < 0.3)   # few distinct values: many real-fake ties
    ref = auc_pairs(y, s)
    for order in (np.arange(n), np.arange(n)[::-1], np.argsort(-y, kind='stable'), np.argsort(y, kind='stable')):
        assert roc_auc(y[order], s[order]) == pytest.approx(ref, abs=1e-12)

def test_auc_refuses_one_class():
    with pytest.raises(DflabError, match='needs both real and fake'): roc_auc([1, 1, 1], [.1, .2, .3])

# --- detection_metrics applies the given threshold, never one chosen on the evaluated rows -----------------------

def shifted():
    "Validation and test scores whose balanced thresholds differ clearly (the test scores sit lower)."
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(300, int), np.ones(300, int)]
    sv = sig(np.r_[rng.normal(-1, 1, 300), rng.normal(1.5, 1, 300)])
    st = sig(np.r_[rng.normal(-3, 1, 300), rng.normal(-0.5, 1, 300)])
    return y, sv, y.copy(), st

def test_detection_metrics_uses_the_given_threshold():
    yv, sv, yt, st = shifted()
    t = choose_threshold(yv, sv, 'eer')
    assert abs(t - choose_threshold(yt, st, 'eer')) > 0.1 and abs(t - choose_threshold(yt, st, 'balanced')) > 0.1
    for t in (t, float(st[10]), float(st[-10])):     # and thresholds equal to a test score: fake if score >= t
        m = detection_metrics(yt, st, threshold=t)
        assert m['val_threshold'] == t
        p = (st >= t).astype(int)
        assert m['acc_val'] == float((p == yt).mean())
        assert m['real_acc_val'] == float((p[yt == 0] == 0).mean())
        assert m['fake_acc_val'] == float((p[yt == 1] == 1).mean())

@pytest.mark.parametrize('criterion', THRESHOLD_CRITERIA)
def test_detection_metrics_chooses_on_validation_not_test(criterion):
    yv, sv, yt, st = shifted()
    m = detection_metrics(yt, st, val=(yv, sv), criterion=criterion)
    assert m['val_threshold'] == choose_threshold(yv, sv, criterion)
    assert m['val_threshold'] != choose_threshold(yt, st, criterion)
    assert m['acc_val'] == accuracy_at(yt, st, m['val_threshold'])['acc']

def test_detection_metrics_refuses_val_and_threshold_together():
    yv, sv, yt, st = shifted()
    with pytest.raises(DflabError, match='not both'): detection_metrics(yt, st, val=(yv, sv), threshold=0.5)

def test_bootstrap_is_stratified_and_reproducible():
    y, s = data('prob', 100, 60)
    assert bootstrap_ci(lambda a, b: a.sum(), y, s, n_boot=30) == (60., 60.)
    assert bootstrap_ci(roc_auc, y, s, n_boot=30, seed=2) == bootstrap_ci(roc_auc, y, s, n_boot=30, seed=2)
    lo, hi = bootstrap_ci(roc_auc, y, s, n_boot=200)
    assert lo < roc_auc(y, s) < hi

# --- one sort instead of scikit-learn, every replicate and every group at once instead of a loop --------------------

@pytest.mark.parametrize('seed', range(4))
def test_curves_equal_scikit_learns(seed):
    from sklearn import metrics as skm
    rng = np.random.default_rng(seed)
    n = 300; y = rng.integers(0, 2, n); y[:2] = [0, 1]
    s = rng.integers(0, 20, n) / 20 if seed % 2 else rng.normal(size=n) + y      # with and without ties
    for a, b in zip(roc_points(y, s), skm.roc_curve(y, s, drop_intermediate=False)): np.testing.assert_array_equal(a, b)
    p, r, t = pr_points(y, s); P, R, T = skm.precision_recall_curve(y, s)
    np.testing.assert_array_equal(p[1:], P[:-1][::-1]); np.testing.assert_array_equal(r[1:], R[:-1][::-1])
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)

def test_vectorised_intervals_match_the_per_replicate_bootstrap():
    "bootstrap_detection (every replicate at once) against bootstrap_ci (one metric call per replicate, through "
    "scipy.stats.bootstrap), both seeded: the same intervals up to Monte-Carlo noise."
    y, s = data('prob', 300, 240, seed=4)
    fast = bootstrap_detection(y, s, n_boot=2000, seed=0, thresholds={'acc': 0.5, 'acc_val': 0.7})
    slow = {'auc': bootstrap_ci(roc_auc, y, s, 2000, seed=1), 'ap': bootstrap_ci(average_precision, y, s, 2000, seed=1),
            'eer': bootstrap_ci(lambda a, b: eer(a, b)[0], y, s, 2000, seed=1),
            'acc': bootstrap_ci(lambda a, b: accuracy_at(a, b, 0.5)['acc'], y, s, 2000, seed=1),
            'acc_val': bootstrap_ci(lambda a, b: accuracy_at(a, b, 0.7)['acc'], y, s, 2000, seed=1)}
    for k, (lo, hi) in slow.items():
        assert fast[k][0] == pytest.approx(lo, abs=0.012) and fast[k][1] == pytest.approx(hi, abs=0.012), (k, fast[k], slow[k])
        assert fast[k][1] - fast[k][0] == pytest.approx(hi - lo, rel=0.15), k                   # and as wide
    assert bootstrap_detection(y, s, n_boot=200, seed=3) == bootstrap_detection(y, s, n_boot=200, seed=3)

@pytest.mark.parametrize('reals', ['all', 'same'])
def test_breakdown_matches_one_group_at_a_time(reals):
    "Every group at once equals each group's own roc_auc / average_precision, and its bootstrap_ci within noise."
    rng = np.random.default_rng(7)
    gen = np.r_[np.full(300, 'real'), np.repeat(['gan', 'ldm', 'vq'], 90)]
    y = (gen != 'real').astype(int)
    shift = {'real': 0.0, 'gan': 1.5, 'ldm': 0.8, 'vq': 0.3}
    s = np.round(np.array([rng.normal(shift[g], 1) for g in gen]), 1)          # rounded: ties within and across groups
    cat = rng.choice(['car', 'cat'], len(y))
    df = pd.DataFrame({'label': y, 'score': s, 'generator': gen, 'category': cat})
    by = 'generator' if reals == 'all' else 'category'
    got = breakdown(df, by=by, reals=reals, ci=True, n_boot=2000, seed=0)
    for r in got.itertuples():
        g = getattr(r, by)
        neg = df[(df.label == 0) & ((df[by] == g) if reals == 'same' else True)]
        pos = df[(df.label == 1) & (df[by] == g)]
        yy, ss = np.r_[np.zeros(len(neg), int), np.ones(len(pos), int)], np.r_[neg.score, pos.score]
        assert (r.n_fake, r.n_real) == (len(pos), len(neg))
        assert r.auc == pytest.approx(roc_auc(yy, ss), abs=1e-12) and r.ap == pytest.approx(average_precision(yy, ss), abs=1e-12)
        assert r.fake_acc == pytest.approx((pos.score >= 0.5).mean())
        lo, hi = bootstrap_ci(roc_auc, yy, ss, 2000, seed=1)
        assert r.auc_lo == pytest.approx(lo, abs=0.015) and r.auc_hi == pytest.approx(hi, abs=0.015), (g, r, lo, hi)

# --- write_evaluation: the threshold it is given, end to end ------------------------------------------------------

def table(y, s, t, gen):
    return pd.DataFrame({'path': [f'img{i}.png' for i in range(len(y))], 'label': y, 'generator': gen, 'score': s,
                         'pred': (s >= t).astype(int)})

@pytest.mark.parametrize('criterion', THRESHOLD_CRITERIA)
def test_write_evaluation_reports_the_given_threshold(tmp_path, criterion):
    yv, sv, yt, st = shifted()
    gen = np.where(yt == 1, np.where(np.arange(len(yt)) % 2, 'sd', 'gan'), 'real')
    t = choose_threshold(yv, sv, criterion)           # as the Trainer does, once, on validation
    val = table(yv, sv, t, gen)
    yt, st, gen = np.r_[yt, 0, 1, 1], np.r_[st, t, t, t], np.r_[gen, ['real', 'sd', 'gan']]   # test rows at the cut
    test = table(yt, st, t, gen)
    m = write_evaluation(tmp_path, test, val=val, threshold=t, n_boot=0, plots=False)
    saved = json.loads((tmp_path/'test_metrics.json').read_text())
    run = json.loads((tmp_path/'metrics.json').read_text())['test']
    for mm in (m['test'], saved, run): assert mm['val_threshold'] == t
    assert saved['acc_val'] == float((test.pred == test.label).mean())
    assert saved['real_acc_val'] == float((test.pred[test.label == 0] == 0).mean())
    assert saved['fake_acc_val'] == float((test.pred[test.label == 1] == 1).mean())
    assert f"{t:.4f}" in (tmp_path/'report.md').read_text()
    written = pd.read_csv(tmp_path/'test_predictions.csv')
    assert saved['acc_val'] == float((written.pred == written.label).mean())

def test_write_evaluation_ignores_validation_for_the_threshold(tmp_path):
    yv, sv, yt, st = shifted()
    gen = np.where(yt == 1, 'sd', 'real')
    t = choose_threshold(yv, sv, 'eer')
    assert abs(t - choose_threshold(yv, sv, 'balanced')) > 1e-3     # a 'balanced' re-pick on val would show
    m = write_evaluation(tmp_path, table(yt, st, t, gen), val=table(yv, sv, t, gen), threshold=t, n_boot=0,
                         plots=False)
    assert m['test']['val_threshold'] == t

def test_write_evaluation_refuses_a_pred_column_from_another_threshold(tmp_path):
    yv, sv, yt, st = shifted()
    gen = np.where(yt == 1, 'sd', 'real')
    with pytest.raises(DflabError, match='pass the threshold the predictions were made with'):
        write_evaluation(tmp_path, table(yt, st, 0.5, gen), threshold=0.2, n_boot=0, plots=False)
