/* SPDX-License-Identifier: MIT */
// cpp_pkgconfig.cpp - libeevp from C++17, built against the installed
// library through pkg-config only (no path into the source tree):
//
//   c++ -std=c++17 cpp_pkgconfig.cpp $(pkg-config --cflags --libs eevp) -o cpp_pkgconfig
//
// The C API owns its objects through create/free pairs; here std::unique_ptr
// with the free functions as deleters does the freeing, and a failed call
// becomes a C++ exception carrying the context's message.  The loop samples
// each token from the exited sequence's candidates (temperature, then top-p)
// instead of taking the argmax.
#include <eevp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct head_deleter {
    void operator()(eevp_head *h) const noexcept { eevp_head_free(h); }
};
struct ctx_deleter {
    void operator()(eevp_ctx *c) const noexcept { eevp_ctx_free(c); }
};
using head_ptr = std::unique_ptr<eevp_head, head_deleter>;
using ctx_ptr = std::unique_ptr<eevp_ctx, ctx_deleter>;

struct eevp_error : std::runtime_error {
    int code;
    eevp_error(int rc, const std::string &what)
        : std::runtime_error(what + ": " + eevp_strerror(rc)), code(rc) {}
};

void check(int rc, const eevp_ctx *ctx, const char *what)
{
    if (rc < 0)
        throw eevp_error(rc, std::string(what) + " (" + eevp_ctx_errmsg(ctx) + ")");
}

head_ptr make_head(const std::vector<float> &w, int64_t vocab, int64_t dim)
{
    eevp_head_options o = EEVP_HEAD_OPTIONS_INIT;
    o.n_vocab = vocab;
    o.dim = dim;
    o.weights = w.data(); // borrowed: w outlives the head
    o.norm = EEVP_NORM_RMS;
    eevp_head *h = nullptr;
    char msg[256];
    int rc = eevp_head_create(&h, &o, msg, sizeof msg);
    if (rc != EEVP_OK)
        throw eevp_error(rc, std::string("eevp_head_create: ") + msg);
    return head_ptr(h);
}

ctx_ptr make_ctx(const eevp_head *head, int32_t layers, int32_t k)
{
    eevp_ctx_options o = EEVP_CTX_OPTIONS_INIT;
    o.n_layers = layers;
    o.first_layer = 2;
    o.k = k;
    o.threshold = 0.6f;
    eevp_ctx *c = nullptr;
    char msg[256];
    int rc = eevp_ctx_create(&c, head, &o, msg, sizeof msg);
    if (rc != EEVP_OK)
        throw eevp_error(rc, std::string("eevp_ctx_create: ") + msg);
    return ctx_ptr(c);
}

// Temperature, then nucleus (top-p) sampling over candidates given in the
// library's order (best first).
int32_t sample(const std::vector<float> &logits, const std::vector<int32_t> &ids,
               double temperature, double top_p, std::mt19937 &rng)
{
    std::vector<double> p(logits.size());
    const double m = logits.front();
    double sum = 0.0;
    for (size_t j = 0; j < p.size(); j++)
        sum += p[j] = std::exp((logits[j] - m) / temperature);
    size_t keep = 0;
    for (double mass = 0.0; keep < p.size() && mass < top_p * sum; keep++)
        mass += p[keep];
    std::discrete_distribution<size_t> pick(p.begin(), p.begin() + static_cast<long>(keep));
    return ids[pick(rng)];
}

} // namespace

int main()
{
    constexpr int64_t V = 64, D = 20;
    constexpr int32_t L = 6, K = 8, TOKENS = 6;
    try {
        std::vector<float> w(V * D);
        for (int64_t v = 0; v < V; v++) { // token v: axis v % 16 plus group axis 16 + v / 16
            w[v * D + v % 16] = 3.0f;
            w[v * D + 16 + v / 16] = 2.0f;
        }
        head_ptr head = make_head(w, V, D);
        ctx_ptr ctx = make_ctx(head.get(), L, K);
        std::mt19937 rng(42);
        int32_t token = 5;

        std::printf("libeevp %s (C++ via pkg-config)\n", eevp_version_string());
        for (int32_t t = 0; t < TOKENS; t++) {
            check(eevp_step_begin(ctx.get(), 1, &t), ctx.get(), "eevp_step_begin");
            const int32_t target = (token * 7 + 3) % int32_t(V); // the toy model's next token
            std::vector<float> h(D);
            for (int32_t l = 0; l < L && eevp_step_n_running(ctx.get()) > 0; l++) {
                for (int64_t c = 0; c < D; c++) // a toy layer: sharper with depth
                    h[c] = float((c * 3 + l + token) % 5) * 0.2f;
                h[target % 16] += 0.3f * float(l);
                h[16 + target / 16] += 0.3f * float(l);
                if (eevp_ctx_layer_required(ctx.get(), l) == 1)
                    check(eevp_step_layer(ctx.get(), l, h.data(), D, 1, nullptr), ctx.get(),
                          "eevp_step_layer");
            }
            eevp_result r{};
            r.struct_size = sizeof r;
            check(eevp_step_result(ctx.get(), 0, &r), ctx.get(), "eevp_step_result");
            std::vector<float> logits(K);
            std::vector<int32_t> ids(K);
            int32_t n = 0;
            check(eevp_step_candidates(ctx.get(), 0, K, logits.data(), ids.data(), &n), ctx.get(),
                  "eevp_step_candidates");
            logits.resize(static_cast<size_t>(n));
            ids.resize(static_cast<size_t>(n));
            const int32_t sampled = sample(logits, ids, 1.5, 0.95, rng);
            check(eevp_step_end(ctx.get()), ctx.get(), "eevp_step_end");
            std::printf("token %d: argmax %2d, sampled %2d, layer %d%s\n", t, r.token, sampled,
                        r.layer, r.reason == EEVP_REASON_CONFIDENT ? " (early exit)" : "");
            token = sampled;
        }
        eevp_stats st{};
        st.struct_size = sizeof st;
        check(eevp_ctx_stats(ctx.get(), &st), ctx.get(), "eevp_ctx_stats");
        const double baseline = double(std::max<int64_t>(1, st.head_flops_baseline));
        std::printf("%lld tokens, %lld exited early, head FLOPs %.0f%% of the baseline\n",
                    static_cast<long long>(st.tokens), static_cast<long long>(st.exited_early),
                    100.0 * double(st.head_flops) / baseline);
    } catch (const eevp_error &e) {
        std::fprintf(stderr, "cpp_pkgconfig: %s\n", e.what());
        return 1;
    }
    return 0;
}
