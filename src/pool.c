/* SPDX-License-Identifier: MIT */
/* pool.c - a context's worker threads (eevp_ctx_options.n_threads >= 2).
 *
 * n - 1 threads started at creation and joined at free; a job is split into
 * up to n parts (one per EEVPI_POOL_GRAIN bytes of rows), part 0 runs on the
 * calling thread, the others on workers 1 .. parts-1, and eevpi_pool_run
 * returns when every part is done.  Workers sleep on a
 * condition variable between jobs (no spinning: between two checks the host
 * runs a transformer layer, and a spinning worker would take its core).
 * Nothing here calls user code: criteria and allocators run on the caller's
 * thread only. */
#include "internal.h"

#include <signal.h>
#include <string.h>

static void *worker_main(void *p)
{
    eevpi_worker *w = (eevpi_worker *)p;
    eevpi_pool *pool = w->pool;
    unsigned long seen = 0;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        eevpi_pool_fn fn;
        void *arg;
        int parts;
        while (pool->gen == seen && !pool->quit)
            pthread_cond_wait(&pool->go, &pool->mu);
        if (pool->quit)
            break;
        seen = pool->gen;
        if (w->part >= pool->parts)
            continue; /* not needed for this job */
        fn = pool->fn;
        arg = pool->arg;
        parts = pool->parts;
        pthread_mutex_unlock(&pool->mu);
        fn(arg, w->part, parts);
        pthread_mutex_lock(&pool->mu);
        if (--pool->pending == 0)
            pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

static void pool_stop(eevpi_pool *pool)
{
    int i;
    pthread_mutex_lock(&pool->mu);
    pool->quit = 1;
    pthread_cond_broadcast(&pool->go);
    pthread_mutex_unlock(&pool->mu);
    for (i = 0; i < pool->started; i++)
        pthread_join(pool->th[i], NULL);
}

int eevpi_pool_create(eevpi_pool **out, int n_threads, const eevpi_mem *mem, char *msg,
                      size_t msg_size)
{
    eevpi_pool *pool;
    sigset_t all, old;
    int i, rc = 0;
    *out = NULL;
    pool = (eevpi_pool *)eevpi_alloc(mem, sizeof *pool);
    if (!pool) {
        eevpi_msg(msg, msg_size, "out of memory (worker pool)");
        return EEVP_ENOMEM;
    }
    memset(pool, 0, sizeof *pool);
    pool->mem = *mem;
    pool->n = n_threads;
    pool->grain = EEVPI_POOL_GRAIN;
    pool->th = (pthread_t *)eevpi_alloc(mem, sizeof(pthread_t) * (size_t)(n_threads - 1));
    pool->w = (eevpi_worker *)eevpi_alloc(mem, sizeof(eevpi_worker) * (size_t)(n_threads - 1));
    if (!pool->th || !pool->w) {
        eevpi_free(mem, pool->th);
        eevpi_free(mem, pool->w);
        eevpi_free(mem, pool);
        eevpi_msg(msg, msg_size, "out of memory (worker pool)");
        return EEVP_ENOMEM;
    }
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->go, NULL);
    pthread_cond_init(&pool->done, NULL);
    /* Workers start with every signal blocked (they inherit the mask):
     * the host's signals go to its own threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (i = 0; i < n_threads - 1; i++) {
        pool->w[i].pool = pool;
        pool->w[i].part = i + 1;
        if ((rc = pthread_create(&pool->th[i], NULL, worker_main, &pool->w[i])) != 0)
            break;
        pool->started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pool->started < n_threads - 1) {
        eevpi_msg(msg, msg_size, "could not start worker thread %d of %d (error %d)",
                  pool->started + 1, n_threads - 1, rc);
        eevpi_pool_free(pool);
        return EEVP_ENOMEM;
    }
    *out = pool;
    return EEVP_OK;
}

void eevpi_pool_free(eevpi_pool *pool)
{
    eevpi_mem mem;
    if (!pool)
        return;
    pool_stop(pool);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->go);
    pthread_mutex_destroy(&pool->mu);
    mem = pool->mem;
    eevpi_free(&mem, pool->th);
    eevpi_free(&mem, pool->w);
    eevpi_free(&mem, pool);
}

int64_t eevpi_pool_size(int n_threads)
{
    return n_threads >= 2 ? (int64_t)sizeof(eevpi_pool) +
                                (int64_t)(n_threads - 1) * (int64_t)(sizeof(pthread_t) + sizeof(eevpi_worker))
                          : 0;
}

int eevpi_pool_parts(const eevpi_pool *pool, int64_t bytes)
{
    int64_t p;
    if (!pool)
        return 1;
    p = bytes / pool->grain;
    if (p < 2)
        return 1;
    return p < pool->n ? (int)p : pool->n;
}

void eevpi_pool_run(eevpi_pool *pool, int64_t bytes, eevpi_pool_fn fn, void *arg)
{
    const int parts = eevpi_pool_parts(pool, bytes);
    if (parts < 2) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool->mu);
    pool->fn = fn;
    pool->arg = arg;
    pool->parts = parts;
    pool->pending = parts - 1;
    pool->gen++;
    pthread_cond_broadcast(&pool->go);
    pthread_mutex_unlock(&pool->mu);
    fn(arg, 0, parts);
    pthread_mutex_lock(&pool->mu);
    while (pool->pending > 0)
        pthread_cond_wait(&pool->done, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
}
