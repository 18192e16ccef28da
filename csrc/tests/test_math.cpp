// ctest for the torch-free math: row statistics (online and merged), the vectorised exp and row
// scans (row by row, and a block of rows at once), and the per-sample loss and gradient
// coefficients against finite differences.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu/exp_pack.h"
#include "cpu/row_ops.h"
#include "rankmixup/row_stats.h"
#include "rankmixup/sample_loss.h"

namespace {

using namespace rankmixup;

int failures = 0;

void expect_near(double actual, double expected, double tol, const char* what) {
  if (!(std::fabs(actual - expected) <= tol * (1.0 + std::fabs(expected)))) {
    std::printf("FAIL %s: %.17g vs %.17g\n", what, actual, expected);
    ++failures;
  }
}

RowStats<double> direct_stats(const std::vector<double>& z) {
  RowStats<double> s;
  for (size_t c = 0; c < z.size(); ++c) s.push(z[c], static_cast<int64_t>(c));
  return s;
}

void test_row_stats(std::mt19937& rng) {
  std::normal_distribution<double> normal(0.0, 3.0);
  std::vector<double> z(37);
  for (double& v : z) v = normal(rng);
  z[30] = z[5] = 20.0;  // a tie: the argmax must be the lower index
  const RowStats<double> s = direct_stats(z);
  double sumexp = 0;
  for (double v : z) sumexp += std::exp(v - 20.0);
  expect_near(s.max, 20.0, 0, "max");
  expect_near(static_cast<double>(s.argmax), 5, 0, "argmax tie -> lowest index");
  expect_near(s.sumexp, sumexp, 1e-14, "sumexp");
  expect_near(s.confidence(), 1.0 / sumexp, 1e-14, "confidence");
  // Any split of the row merges back to the same statistics, in either order.
  for (size_t cut : {1, 6, 31, 36}) {
    RowStats<double> a, b;
    for (size_t c = 0; c < z.size(); ++c) (c < cut ? a : b).push(z[c], static_cast<int64_t>(c));
    for (const RowStats<double>& m : {merge(a, b), merge(b, a)}) {
      expect_near(m.max, s.max, 0, "merged max");
      expect_near(static_cast<double>(m.argmax), 5, 0, "merged argmax");
      expect_near(m.sumexp, s.sumexp, 1e-14, "merged sumexp");
    }
  }
}

void test_vector_exp() {
  double worst = 0;
  for (float x = -87.0f; x <= 0.0f; x += 0.0137f) {
    worst = std::max(worst, std::fabs(cpu::exp_nonpositive(x) / std::exp(double(x)) - 1.0));
  }
  expect_near(worst, 0.0, 2e-7, "exp_nonpositive relative error");  // ~2 ulp without FMA
  std::vector<float> z = {1.f, 3.f, -2.f, 3.f, 0.5f};
  const cpu::RowScan<float> scan = cpu::scan_row(z.data(), static_cast<int64_t>(z.size()));
  expect_near(static_cast<double>(scan.stats.argmax), 1, 0, "scan_row argmax");
  expect_near(scan.sum, 5.5, 1e-7, "scan_row sum");
  z[2] = NAN;
  expect_near(std::isnan(cpu::scan_row(z.data(), 5).stats.max), 1, 0, "non-finite row poisons its max");
  // Rows of one partial pack and of several packs with a masked class (-inf), signed zeros as
  // the tied max, and a non-finite value in the last pack (poisons) or in a whole one.
  for (int n : {5, 40}) {
    std::vector<float> row(n, -1.0f);
    row[1] = -std::numeric_limits<float>::infinity();
    row[2] = -0.0f;
    row[n - 1] = 0.0f;
    const cpu::RowScan<float> masked = cpu::scan_row(row.data(), n);
    expect_near(static_cast<double>(masked.stats.argmax), 2, 0, "-0.0 and 0.0 tie: the first wins");
    expect_near(masked.stats.sumexp, 2 + (n - 3) * std::exp(-1.0), 1e-6, "a -inf logit adds nothing");
    for (float bad : {NAN, INFINITY}) {
      for (int at : {0, n - 1}) {
        std::vector<float> poisoned = row;
        poisoned[at] = bad;
        expect_near(std::isnan(cpu::scan_row(poisoned.data(), n).stats.max), 1, 0, "NaN/+inf poisons the row");
      }
    }
    const std::vector<float> all_masked(n, -std::numeric_limits<float>::infinity());
    expect_near(std::isnan(cpu::scan_row(all_masked.data(), n).stats.max), 1, 0, "an all--inf row poisons");
  }
#ifdef RANKMIXUP_FLOAT_PACKS
  // The pack exp is the scalar one, lane by lane.
  cpu::FloatPack xs;
  for (int l = 0; l < 16; ++l) xs[l] = -0.37f * static_cast<float>(l * l);
  const cpu::FloatPack es = cpu::exp_nonpositive(xs);
  for (int l = 0; l < 16; ++l) expect_near(es[l], cpu::exp_nonpositive(xs[l]), 0, "pack exp lane");
#endif
  // Rows of one partial pack of 16, of whole packs and a partial one, with the max tied: in
  // neighbouring columns, or far apart (in other packs, and in the same lane of two packs).
  for (const auto& [n, first, second] : {std::tuple{2, 0, 1}, {10, 8, 9}, {16, 3, 14}, {17, 15, 16}, {40, 1, 39},
                                         {40, 5, 21}, {100, 3, 35}, {100, 97, 98}}) {
    std::vector<float> row(n);
    std::vector<double> exact(n);
    for (int c = 0; c < n; ++c) exact[c] = row[c] = std::sin(0.7f * static_cast<float>(c));
    row[first] = row[second] = 1.5f;  // the lower index wins
    exact[first] = exact[second] = 1.5;
    const cpu::RowScan<float> s = cpu::scan_row(row.data(), n);
    const RowStats<double> d = direct_stats(exact);
    expect_near(static_cast<double>(s.stats.argmax), first, 0, "scan_row argmax, tied");
    expect_near(s.stats.sumexp, d.sumexp, 1e-6, "scan_row sumexp");
    // The gradient from the stored exps (the forward's) equals the recomputed one (the backward's).
    std::vector<float> exps(n), from_exps(n), recomputed(n);
    const cpu::RowScan<float> stored = cpu::scan_row(row.data(), n, exps.data());
    expect_near(stored.stats.sumexp, s.stats.sumexp, 0, "scan_row sumexp with exps");
    RowGrad<float> g;
    g.scale_p = 0.7f;
    g.constant = -0.01f;
    g.at_max = 0.25f;
    g.at_target = -0.5f;
    g.argmax = stored.stats.argmax;
    g.target = n / 3;
    cpu::finish_grad_row(exps.data(), n, stored.stats, g, from_exps.data());
    RowGrad<float> per_exp = g;  // the backward's scale_p applies to exp(z - max) (pack_row)
    per_exp.scale_p = g.scale_p / stored.stats.sumexp;
    cpu::write_grad_row(row.data(), n, stored.stats.max, per_exp, recomputed.data());
    for (int c = 0; c < n; ++c) {
      expect_near(from_exps[c], recomputed[c], 1e-6, "finish_grad_row vs write_grad_row");
      // The point terms land where they belong, whether in a whole pack or in the last one.
      const double softmax = std::exp(exact[c] - d.max) / d.sumexp;
      const double want = 0.7 * softmax - 0.01 + (c == first ? 0.25 : 0) + (c == n / 3 ? -0.5 : 0);
      expect_near(from_exps[c], want, 1e-6, "finish_grad_row vs the exact gradient");
    }
  }
}

// scan_row_block, one row per lane, against scan_row, row by row: for every row count and
// column count of a block, over random rows salted with ties, signed zeros, masked classes
// (-inf) and poisons (NaN, +inf, an all -inf row). The max, argmax and exps come out bit for
// bit; the sums, added in another order, within rounding.
void test_row_block(std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_int_distribution<int> salt(0, 9);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  for (int64_t n = 1; n <= cpu::kBlockRows; ++n) {
    for (int64_t rows = 1; rows <= cpu::kBlockRows; ++rows) {
      std::vector<float> z(rows * n);
      for (float& v : z) v = normal(rng);
      for (int64_t i = 0; i < rows; ++i) {
        float* row = z.data() + i * n;
        const int64_t c = i % n;
        switch (salt(rng)) {
          case 0: row[c] = row[n - 1] = 9.0f; break;  // a tied max: the lower column wins
          case 1: row[c] = -0.0f; row[n - 1] = 0.0f; std::fill_n(row, c, -1.0f); break;
          case 2: row[c] = -kInf; break;
          case 3: row[c] = NAN; break;
          case 4: row[c] = kInf; break;
          case 5: std::fill_n(row, n, -kInf); break;
          default: break;
        }
      }
      std::vector<float> exps(rows * n, -1.0f), row_exps(n);
      std::vector<cpu::RowScan<float>> block(rows);
      for (cpu::RowScan<float>& scan : block) scan.stats.argmax = 12345;  // what an earlier block left

      cpu::scan_row_block(z.data(), rows, n, exps.data(), block.data());
      for (int64_t i = 0; i < rows; ++i) {
        const cpu::RowScan<float> want = cpu::scan_row(z.data() + i * n, n, row_exps.data());
        const cpu::RowScan<float>& got = block[i];
        const bool poisoned = std::isnan(want.stats.max);
        expect_near(std::isnan(got.stats.max), poisoned, 0, "block scan: poisoned like scan_row");
        expect_near(std::isnan(got.stats.sumexp), poisoned, 0, "block scan: poisoned sumexp");
        expect_near(static_cast<double>(got.stats.argmax), static_cast<double>(want.stats.argmax), 0,
                    "block scan argmax");
        if (poisoned) continue;
        // (A tie of -0.0 and 0.0 may leave either zero as the max: the same number.)
        expect_near(got.stats.max, want.stats.max, 0, "block scan max");
        expect_near(got.stats.sumexp, want.stats.sumexp, 4e-7, "block scan sumexp");
        if (std::isinf(want.sum)) {  // a masked class
          expect_near(got.sum == want.sum, 1, 0, "block scan logit sum, -inf");
        } else {
          double magnitude = 0;  // the rounding of a sum scales with its terms
          for (int64_t c = 0; c < n; ++c) magnitude += std::fabs(z[i * n + c]);
          expect_near(got.sum - want.sum, 0, 1e-6 * magnitude, "block scan logit sum");
        }
        for (int64_t c = 0; c < n; ++c) expect_near(exps[i * n + c], row_exps[c], 0, "block scan exps");
      }
      // Without exps, the same statistics.
      std::vector<cpu::RowScan<float>> bare(rows);
      cpu::scan_row_block(z.data(), rows, n, nullptr, bare.data());
      for (int64_t i = 0; i < rows; ++i) {
        const bool same = std::isnan(block[i].stats.sumexp) ? std::isnan(bare[i].stats.sumexp)
                                                             : bare[i].stats.sumexp == block[i].stats.sumexp;
        expect_near(same, 1, 0, "block scan without exps");
      }
    }
  }
}

// Loss of one sample as a function of all its logits, for finite differences.
struct Sample {
  LossConfig<double> cfg;
  int64_t classes, num_mix, target;
  std::vector<float> rel;
  std::vector<double> class_weights;  // empty: unweighted

  double weight(int64_t c) const { return class_weights.empty() ? 1.0 : class_weights[c]; }

  double loss(const std::vector<double>& z, std::vector<RowGrad<double>>* grads, std::vector<RowStats<double>>* st) const {
    std::vector<RowStats<double>> stats(num_mix + 1);
    CeInputs<double> ce_in{z[target], weight(target), 0.0, 0.0};
    for (int64_t r = 0; r <= num_mix; ++r) {
      stats[r] = direct_stats(std::vector<double>(z.begin() + r * classes, z.begin() + (r + 1) * classes));
    }
    for (int64_t c = 0; c < classes; ++c) {
      ce_in.weight_sum += weight(c);
      ce_in.weighted_logit_sum += weight(c) * z[c];
    }
    const SampleLoss<double> l = sample_loss(cfg, stats[0], ce_in, target, stats.data() + 1, rel.data(), 1, num_mix,
                                             grads ? grads->data() : nullptr);
    if (st) *st = stats;
    return cfg.weight_ce * l.ce + cfg.weight_rank * l.rank;
  }
};

void test_gradients(std::mt19937& rng, Mode mode, Score score, std::vector<double> class_weights) {
  std::normal_distribution<double> normal(0.0, 2.0);
  Sample s{{mode, score, 1.5, 0.1, 6, 0.7, 0.3}, 6, 3, 2, {0.8f, 1.0f, 0.8f}, std::move(class_weights)};
  std::vector<double> z((s.num_mix + 1) * s.classes);
  for (double& v : z) v = normal(rng);
  std::vector<RowGrad<double>> grads(s.num_mix + 1);
  std::vector<RowStats<double>> stats;
  s.loss(z, &grads, &stats);
  for (int64_t r = 0; r <= s.num_mix; ++r) {
    for (int64_t c = 0; c < s.classes; ++c) {
      const int64_t i = r * s.classes + c;
      const double e = std::exp(z[i] - stats[r].max);  // exp(z - max), as the backward takes it
      std::vector<double> up = z, down = z;
      up[i] += 1e-6;
      down[i] -= 1e-6;
      const double numeric = (s.loss(up, nullptr, nullptr) - s.loss(down, nullptr, nullptr)) / 2e-6;
      // Packing for the backward and unpacking with grad_output = 1 changes nothing.
      double packed[kRowCoefs], row_max;
      pack_row(grads[r], stats[r], packed);
      const RowGrad<double> g = unpack_row(packed, grads[r].argmax, grads[r].target, 1.0, &row_max);
      // A raw row's constant is per class: times w_c (sample_loss.h).
      const double class_weight = r == 0 ? s.weight(c) : 1.0;
      expect_near(g.at(e, c, class_weight), numeric, 1e-6, mode == Mode::kMrl ? "MRL gradient" : "M-NDCG gradient");
    }
  }
}

void test_mndcg_order() {
  const float rel[] = {0.6f, 0.9f, 0.6f, 1.0f};  // stable descending order: k = 3, 1, 0, 2
  const int64_t expected[] = {4, 3, 5, 2};
  for (int64_t k = 0; k < 4; ++k) {
    expect_near(static_cast<double>(mndcg_position(rel, 1, 4, k)), static_cast<double>(expected[k]), 0, "position");
  }
}

void test_pair_relevance() {
  expect_near(pair_relevance(0.3, 2, 2), 1.0, 0, "same class: relevance 1");
  expect_near(pair_relevance(0.3, 2, 5), 0.7, 0, "other class: max(lam, 1 - lam)");
  expect_near(pair_relevance(0.8, 2, 5), 0.8, 0, "other class: max(lam, 1 - lam)");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (!std::isnan(pair_relevance(nan, 2, 5))) {
    std::printf("FAIL pair_relevance: a NaN lam must give a NaN relevance\n");
    ++failures;
  }
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  test_row_stats(rng);
  test_vector_exp();
  test_row_block(rng);
  test_mndcg_order();
  test_pair_relevance();
  for (Mode mode : {Mode::kMrl, Mode::kMndcg}) {
    for (Score score : {Score::kLogit, Score::kProb}) {
      test_gradients(rng, mode, score, {});
      test_gradients(rng, mode, score, {0.5, 2.0, 1.0, 0.0, 3.0, 1.5});  // class weights
    }
  }
  if (failures) std::printf("%d failure(s)\n", failures);
  else std::printf("all math tests passed\n");
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
