/* Per-user inotify budgets, for tests/sandbox_user.rs.
 *
 *   inotify hold   opens inotify instances until the kernel refuses one
 *                  (the uid's budget, fs.inotify.max_user_instances, is
 *                  spent), prints "held N ERRNO" and sleeps until killed
 *   inotify try    opens one instance: prints "ok" or the errno's name
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOMEM: return "ENOMEM";
    case EPERM: return "EPERM";
    default: return "other";
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "hold") == 0) {
        int n = 0;
        /* Bounded by the open-files limit too: stop there. */
        while (n < 100000 && inotify_init1(IN_CLOEXEC) >= 0) n++;
        printf("held %d %s\n", n, name(errno));
        fflush(stdout);
        for (;;) pause();
    }
    if (argc == 2 && strcmp(argv[1], "try") == 0) {
        if (inotify_init1(IN_CLOEXEC) >= 0) printf("ok\n");
        else printf("%s\n", name(errno));
        return 0;
    }
    fprintf(stderr, "usage: inotify hold | try\n");
    return 2;
}
