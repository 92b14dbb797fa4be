/* The worker's thread pool for blocking work (LMDB, virus scans, large
 * disk writes). A job's completion runs on the loop thread that submitted
 * it. */
#ifndef SLUICE_WORKPOOL_H
#define SLUICE_WORKPOOL_H

struct event_base;
struct workpool;

struct workpool *workpool_new(int nthreads);
/* Stops taking jobs, lets the ones running finish, joins the threads. Jobs
 * still queued never run, and no done callback runs any more (the loops are
 * gone): their args are not released. Call it after the loop threads stopped
 * and before their bases are freed (the jobs' events live on those bases). */
void workpool_free(struct workpool *wp);

/* work(arg) runs on a pool thread; then done(arg) runs on base's loop thread
 * (base must be running). Returns 0, or -1 on allocation failure (nothing
 * runs). done always runs exactly once after work, unless the pool is freed
 * first. */
int workpool_submit(struct workpool *wp, struct event_base *base, void (*work)(void *),
                    void (*done)(void *), void *arg);

#endif
