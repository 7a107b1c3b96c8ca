/* Takes one of the kernel's per-user budgets inside a sandbox and holds
 * it (tests/isolation.rs, native_only::kernel_budgets_are_each_sandboxs_own).
 *
 *   hold inotify N   inotify instances, up to N
 *   hold mqueue N    POSIX message queues of 8 messages of 8 KiB, up to N
 *
 * Prints "<taken> <errno name of the first failure, or ok>" on one line,
 * closes stdout (a reader of a fifo sees the line at once) and then holds
 * what it took until it is killed. */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

static const char *err_name(int e) {
  switch (e) {
  case EMFILE: return "EMFILE";
  case ENFILE: return "ENFILE";
  case ENOMEM: return "ENOMEM";
  case ENOSPC: return "ENOSPC";
  case EPERM: return "EPERM";
  case EACCES: return "EACCES";
  case ENOSYS: return "ENOSYS";
  case EINVAL: return "EINVAL";
  default: return "other";
  }
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: hold inotify|mqueue N\n");
    return 2;
  }
  int n = atoi(argv[2]), taken = 0, err = 0;
  for (; taken < n; taken++) {
    int ok;
    if (strcmp(argv[1], "inotify") == 0) {
      ok = inotify_init1(IN_CLOEXEC) >= 0;
    } else if (strcmp(argv[1], "mqueue") == 0) {
      char name[64];
      struct mq_attr attr = {.mq_maxmsg = 8, .mq_msgsize = 8192};
      snprintf(name, sizeof name, "/hold-%d-%d", (int)getpid(), taken);
      ok = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &attr) != (mqd_t)-1;
    } else {
      fprintf(stderr, "unknown budget %s\n", argv[1]);
      return 2;
    }
    if (!ok) {
      err = errno;
      break;
    }
  }
  printf("%d %s\n", taken, err ? err_name(err) : "ok");
  fflush(stdout);
  close(1);
  for (;;) pause();
}
