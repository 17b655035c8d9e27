// memcount.so: an LD_PRELOAD library that counts the bytes moved by memcpy/memmove calls of at
// least $MEMCOUNT_MIN bytes (default 4096), per call stack (14 frames). SIGUSR1 makes a helper
// thread append the table to $MEMCOUNT_OUT and reset it; count_copies.py reads and classifies it.
//
//   gcc -O2 -fPIC -shared -o memcount.so memcount.c -ldl -lpthread
//   MEMCOUNT_OUT=/tmp/m.txt LD_PRELOAD=./memcount.so build/bin/nexuskv-server ...
//
// Copies only: conversions (float16 <-> float32), memset, copies the compiler inlines and the
// kernel's (pread, recvmsg, sendmsg) are not seen. The copy itself runs as `rep movsb`, so timings
// taken under it mean nothing.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static size_t MIN = 4096;
#define DEPTH 14
#define SLOTS 4096
typedef struct {
  void* pc[DEPTH];
  int n;
  unsigned long long bytes, calls;
} Entry;
static Entry table[SLOTS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static __thread int busy;
static volatile sig_atomic_t dump_req;

static inline void raw_copy(void* d, const void* s, size_t n) {
  __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
}
static void dump(void);
static void record(size_t n) {
  if (busy) return;
  busy = 1;
  void* pc[DEPTH + 2];
  int k = backtrace(pc, DEPTH + 2);
  k -= 2;
  if (k < 0) k = 0;
  unsigned long h = 1469598103934665603ul;
  for (int i = 0; i < k; ++i) h = (h ^ (uintptr_t)pc[i + 2]) * 1099511628211ul;
  pthread_mutex_lock(&mu);
  for (unsigned s = h % SLOTS, t = 0; t < SLOTS; ++t, s = (s + 1) % SLOTS) {
    Entry* e = &table[s];
    if (e->calls == 0) {
      e->n = k;
      for (int i = 0; i < k; ++i) e->pc[i] = pc[i + 2];
    } else if (e->n != k || memcmp(e->pc, pc + 2, k * sizeof(void*)) != 0)
      continue;
    e->bytes += n;
    e->calls++;
    break;
  }
  pthread_mutex_unlock(&mu);
  busy = 0;
}
void* memcpy(void* d, const void* s, size_t n) {
  if (n >= MIN) record(n);
  raw_copy(d, s, n);
  return d;
}
void* __memcpy_chk(void* d, const void* s, size_t n, size_t dl) {
  (void)dl;
  return memcpy(d, s, n);
}
void* memmove(void* d, const void* s, size_t n) {
  if (n >= MIN) record(n);
  if ((char*)d <= (const char*)s || (char*)d >= (const char*)s + n) {
    raw_copy(d, s, n);
  } else {
    for (size_t i = n; i-- > 0;) ((char*)d)[i] = ((const char*)s)[i];
  }
  return d;
}
static void dump(void) {
  const char* path = getenv("MEMCOUNT_OUT");
  if (!path) return;
  pthread_mutex_lock(&mu);
  FILE* f = fopen(path, "a");
  if (f) {
    fprintf(f, "=== dump pid %d\n", getpid());
    for (int s = 0; s < SLOTS; ++s) {
      Entry* e = &table[s];
      if (!e->calls) continue;
      fprintf(f, "E %llu %llu", e->bytes, e->calls);
      for (int i = 0; i < e->n; ++i) {
        Dl_info info;
        if (dladdr(e->pc[i], &info) && info.dli_fname) {
          fprintf(f, " %s+0x%lx", info.dli_fname,
                  (unsigned long)((char*)e->pc[i] - (char*)info.dli_fbase));
        } else
          fprintf(f, " ?%p", e->pc[i]);
      }
      fprintf(f, "\n");
    }
    fclose(f);
  }
  memset(table, 0, sizeof table);
  pthread_mutex_unlock(&mu);
}
static void on_usr1(int sig) {
  (void)sig;
  dump_req = 1;
}
static void* dumper(void* arg) {
  (void)arg;
  busy = 1;  // this thread's own copies are not counted
  for (;;) {
    usleep(10000);
    if (dump_req) {
      dump_req = 0;
      dump();
    }
  }
  return 0;
}
__attribute__((constructor)) static void init(void) {
  if (getenv("MEMCOUNT_MIN")) MIN = (size_t)atol(getenv("MEMCOUNT_MIN"));
  if (getenv("MEMCOUNT_OUT")) {
    signal(SIGUSR1, on_usr1);
    pthread_t t;
    pthread_create(&t, 0, dumper, 0);
  }
}
