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

/* For work that never waits on another thread or the network and is done
 * in microseconds (an LMDB read): work(arg) runs now, on the calling loop
 * thread, and done(arg) from base's loop on its next turn, never before
 * this returns, so the caller sees the order a pool job gives, without the
 * handoff to a pool thread and back (a mutex, a wake-up each way, two
 * context switches on a busy CPU). Returns 0, or -1 on allocation failure
 * (nothing runs). If the loop is stopped first, done never runs. */
int workpool_run_here(struct event_base *base, void (*work)(void *), void (*done)(void *),
                      void *arg);

#endif
