/* SPDX-License-Identifier: MIT */
/* criteria.c - confidence measures over a set of candidate logits. */
#include "internal.h"

#include <math.h>

int eevpi_dist_scan(const float *z, const int32_t *ids, int32_t id0, int32_t n, int need_sum,
                    eevpi_dist *out)
{
    int32_t j, t1 = -1, t2 = -1;
    float z1 = -INFINITY, z2 = -INFINITY;
    int32_t i1 = 0, i2 = 0, n_finite = 0;
    for (j = 0; j < n; j++) {
        const float v = z[j];
        const int32_t id = ids ? ids[j] : id0 + j;
        if (v != v || v == INFINITY)
            return EEVP_ENONFINITE;
        n_finite += v > -INFINITY;
        if (t1 < 0 || eevpi_before(v, id, z1, i1)) {
            t2 = t1, z2 = z1, i2 = i1;
            t1 = j, z1 = v, i1 = id;
        } else if (t2 < 0 || eevpi_before(v, id, z2, i2)) {
            t2 = j, z2 = v, i2 = id;
        }
    }
    out->n = n;
    out->n_finite = n_finite;
    out->top1 = t1;
    out->top2 = t2;
    out->z1 = z1;
    out->z2 = z2;
    out->max = z1;
    out->sumexp = 0.0;
    if (need_sum && n_finite > 0) {
        double s = 0.0;
        for (j = 0; j < n; j++)
            s += exp((double)z[j] - z1);
        out->sumexp = s;
    }
    return EEVP_OK;
}

/* With no finite candidate there is no distribution: confidence 0. */
double eevpi_conf_maxprob(const eevpi_dist *d)
{
    return d->n_finite > 0 ? 1.0 / d->sumexp : 0.0;
}

double eevpi_conf_top2(const eevpi_dist *d)
{
    if (d->n_finite == 0)
        return 0.0;
    if (d->top2 < 0)
        return 1.0 / d->sumexp;
    return (1.0 - exp((double)d->z2 - d->max)) / d->sumexp;
}

double eevpi_conf_entropy(const float *z, const eevpi_dist *d)
{
    double acc = 0.0;
    int32_t j;
    if (d->n_finite <= 1)
        return eevpi_conf_entropy_acc(d, 0.0);
    for (j = 0; j < d->n; j++) {
        if (z[j] > -INFINITY) {
            const double u = (double)z[j] - d->max;
            acc += exp(u) * u;
        }
    }
    return eevpi_conf_entropy_acc(d, acc);
}

double eevpi_conf_entropy_acc(const eevpi_dist *d, double acc)
{
    double h;
    if (d->n_finite == 0)
        return 0.0;
    if (d->n_finite == 1)
        return 1.0;
    /* H = ln S - sum p * (z - max), p = exp(z - max) / S; acc = sum
     * exp(z - max) (z - max). */
    h = log(d->sumexp) - acc / d->sumexp;
    h = 1.0 - h / log((double)d->n_finite);
    return h < 0.0 ? 0.0 : (h > 1.0 ? 1.0 : h);
}

void eevpi_softmax(const float *z, const eevpi_dist *d, float *p)
{
    int32_t j;
    for (j = 0; j < d->n; j++)
        p[j] = d->n_finite ? (float)(exp((double)z[j] - d->max) / d->sumexp) : 0.0f;
}

double eevpi_conf_js(const float *p, const float *z, const eevpi_dist *d)
{
    double js = 0.0, c;
    int32_t j;
    if (d->n_finite == 0)
        return 0.0;
    for (j = 0; j < d->n; j++) {
        const double a = p[j];
        const double b = exp((double)z[j] - d->max) / d->sumexp;
        const double m = 0.5 * (a + b);
        if (a > 0.0)
            js += 0.5 * a * log(a / m);
        if (b > 0.0)
            js += 0.5 * b * log(b / m);
    }
    c = 1.0 - js / log(2.0);
    return c < 0.0 ? 0.0 : (c > 1.0 ? 1.0 : c);
}

double eevpi_cosine(const eevpi_kernels *kern, const float *a, const float *b, int64_t n)
{
    double dot = 0.0, na, nb, s;
    int64_t i;
    for (i = 0; i < n; i++)
        dot += (double)a[i] * b[i];
    kern->sums(a, n, &s, &na);
    kern->sums(b, n, &s, &nb);
    if (na == 0.0 || nb == 0.0)
        return 0.0;
    s = dot / sqrt(na * nb);
    return s < -1.0 ? -1.0 : (s > 1.0 ? 1.0 : s);
}
