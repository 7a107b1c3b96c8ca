/*
 * probe: the escape suite's attempts (tests/escapes.rs), built statically
 * at test time and uploaded into a sandbox. Each attempt runs in a child
 * process and is reported as one line "<attempt> <outcome>": "ok" (the
 * call succeeded), the errno's name ("EPERM"), or "killed-by-<SIG>".
 * Some attempts add what they saw after a colon ("ok:lo").
 *
 * Never run it on a host as root: it tries to mount, reboot, write
 * sysctls and kill PID 1, which a sandbox must refuse.
 *
 *   probe run NAME...           the named attempts, in order
 *   probe connect-tcp PORT      connect to 127.0.0.1:PORT
 *   probe connect-abstract NAME connect to the abstract unix socket @NAME
 *   probe connect-unix PATH     connect to the unix socket at PATH
 *   probe kill PID              kill(PID, 0)
 *   probe euid                  "uid R E S" as getresuid reports
 *   probe hold TOKEN            sleeps until killed (TOKEN marks its cmdline)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/bpf.h>
#include <linux/if_packet.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/netlink.h>
#include <linux/perf_event.h>
#include <linux/rtnetlink.h>
#include <linux/sched.h>
#include <linux/userfaultfd.h>
#include <linux/vm_sockets.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_ALG
#define AF_ALG 38
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/* An attempt returns 0 on success or an errno; it may fill `seen`. */
typedef int (*attempt_fn)(char *seen, size_t n);

static int err(long rc) { return rc < 0 ? errno : 0; }

static int sock_err(int domain, int type, int proto) {
    int fd = socket(domain, type, proto);
    if (fd < 0) return errno;
    close(fd);
    return 0;
}

static int a_mount(char *s, size_t n) { return err(mount("none", "/tmp", "tmpfs", 0, NULL)); }
static int a_umount(char *s, size_t n) { return err(umount2("/proc", MNT_DETACH)); }
static int a_fsopen(char *s, size_t n) { return err(syscall(SYS_fsopen, "tmpfs", 0)); }
static int a_open_tree(char *s, size_t n) { return err(syscall(SYS_open_tree, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */)); }
static int a_pivot_root(char *s, size_t n) { return err(syscall(SYS_pivot_root, "/tmp", "/tmp")); }
static int a_chroot(char *s, size_t n) { return err(chroot("/tmp")); }
static int a_unshare_user(char *s, size_t n) { return err(unshare(CLONE_NEWUSER)); }
static int a_unshare_mount(char *s, size_t n) { return err(unshare(CLONE_NEWNS)); }
static int a_unshare_net(char *s, size_t n) { return err(unshare(CLONE_NEWNET)); }
static int a_unshare_pid(char *s, size_t n) { return err(unshare(CLONE_NEWPID)); }
static int a_unshare_cgroup(char *s, size_t n) { return err(unshare(CLONE_NEWCGROUP)); }

static int a_clone_newuser(char *s, size_t n) {
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid < 0) return errno;
    waitpid(pid, NULL, 0);
    return 0;
}

static int a_clone3_newuser(char *s, size_t n) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) _exit(0);
    if (pid < 0) return errno;
    waitpid(pid, NULL, 0);
    return 0;
}

static int a_setns(char *s, size_t n) {
    int fd = open("/proc/self/ns/net", O_RDONLY);
    if (fd < 0) return errno;
    int e = err(setns(fd, 0));
    close(fd);
    return e;
}

static int a_setuid_root(char *s, size_t n) { return err(setuid(0)); }
static int a_sethostname(char *s, size_t n) { return err(sethostname("escaped", 7)); }

static int a_ptrace_attach_1(char *s, size_t n) { return err(ptrace(PTRACE_ATTACH, 1, 0, 0)); }
static int a_ptrace_seize_1(char *s, size_t n) { return err(ptrace(PTRACE_SEIZE, 1, 0, 0)); }

static int a_process_vm_readv_1(char *s, size_t n) {
    char buf[8];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    return err(process_vm_readv(1, &local, 1, &remote, 1, 0));
}

static int a_kill_1(char *s, size_t n) { return err(kill(1, SIGKILL)); }

/* Control: ptrace itself works on the caller's own child. */
static int a_ptrace_own_child(char *s, size_t n) {
    pid_t pid = fork();
    if (pid == 0) {
        pause();
        _exit(0);
    }
    int e = err(ptrace(PTRACE_ATTACH, pid, 0, 0));
    if (e == 0) waitpid(pid, NULL, 0);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return e;
}

static int a_keyctl(char *s, size_t n) { return err(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1)); }
static int a_add_key(char *s, size_t n) { return err(syscall(SYS_add_key, "user", "escape", "x", 1, KEY_SPEC_PROCESS_KEYRING)); }
static int a_request_key(char *s, size_t n) { return err(syscall(SYS_request_key, "user", "escape", NULL, 0)); }

static int a_bpf_map(char *s, size_t n) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    return err(syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
}

static int a_bpf_prog(char *s, size_t n) {
    struct bpf_insn insns[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0},
        {.code = BPF_JMP | BPF_EXIT},
    };
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = 2;
    attr.license = (uint64_t)(uintptr_t)"GPL";
    return err(syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr));
}

/* A software counter on the caller itself: what perf_event_paranoid 2
 * allows an unprivileged process. */
static int a_perf_event_open(char *s, size_t n) {
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_TASK_CLOCK;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    return err(syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
}

static int a_io_uring_setup(char *s, size_t n) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    return err(syscall(SYS_io_uring_setup, 4, &p));
}

/* User-mode-only faults: what vm.unprivileged_userfaultfd=0 allows. */
static int a_userfaultfd(char *s, size_t n) { return err(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY)); }
static int a_dev_userfaultfd(char *s, size_t n) { return err(open("/dev/userfaultfd", O_RDWR)); }

static int a_name_to_handle_at(char *s, size_t n) {
    struct {
        struct file_handle h;
        unsigned char b[128];
    } fh;
    int mount_id;
    fh.h.handle_bytes = 128;
    return err(syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &fh.h, &mount_id, 0));
}

/* The "shocker" attempt: inode 2 of the root file system's device. */
static int a_open_by_handle_at(char *s, size_t n) {
    struct {
        struct file_handle h;
        unsigned char b[8];
    } fh;
    fh.h.handle_bytes = 8;
    fh.h.handle_type = 1; /* FILEID_INO32_GEN */
    uint32_t ino_gen[2] = {2, 0};
    memcpy(fh.h.f_handle, ino_gen, 8);
    int root = open("/", O_RDONLY | O_DIRECTORY);
    int e = err(syscall(SYS_open_by_handle_at, root, &fh.h, O_RDONLY));
    close(root);
    return e;
}

static int a_init_module(char *s, size_t n) { return err(syscall(SYS_init_module, "", 0, "")); }
static int a_finit_module(char *s, size_t n) {
    int fd = open("/proc/self/exe", O_RDONLY);
    int e = err(syscall(SYS_finit_module, fd, "", 0));
    close(fd);
    return e;
}
static int a_delete_module(char *s, size_t n) { return err(syscall(SYS_delete_module, "loop", O_NONBLOCK)); }
static int a_kexec_load(char *s, size_t n) { return err(syscall(SYS_kexec_load, 0, 0, NULL, 0)); }
static int a_iopl(char *s, size_t n) { return err(syscall(SYS_iopl, 3)); }
static int a_syslog(char *s, size_t n) {
    char buf[64];
    return err(syscall(SYS_syslog, 3 /* SYSLOG_ACTION_READ_ALL */, buf, sizeof buf));
}
static int a_reboot(char *s, size_t n) { return err(syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321fedc /* POWER_OFF */, NULL)); }
/* Sets the clock to the time it reads: harmless if it were allowed. */
static int a_clock_settime(char *s, size_t n) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return err(syscall(SYS_clock_settime, CLOCK_REALTIME, &ts));
}

static int a_mknod_char(char *s, size_t n) {
    unlink("/tmp/.escape-mem");
    return err(mknod("/tmp/.escape-mem", S_IFCHR | 0666, makedev(1, 1)));
}
static int a_mknod_block(char *s, size_t n) {
    unlink("/tmp/.escape-sda");
    return err(mknod("/tmp/.escape-sda", S_IFBLK | 0666, makedev(8, 0)));
}
/* Control: an unprivileged node type is allowed. */
static int a_mknod_fifo(char *s, size_t n) {
    unlink("/tmp/.escape-fifo");
    int e = err(mknod("/tmp/.escape-fifo", S_IFIFO | 0600, 0));
    unlink("/tmp/.escape-fifo");
    return e;
}

static int a_raw_socket(char *s, size_t n) { return sock_err(AF_INET, SOCK_RAW, IPPROTO_RAW); }
static int a_raw6_socket(char *s, size_t n) { return sock_err(AF_INET6, SOCK_RAW, IPPROTO_RAW); }
static int a_ping_socket(char *s, size_t n) { return sock_err(AF_INET, SOCK_DGRAM, IPPROTO_ICMP); }
static int a_packet_socket(char *s, size_t n) { return sock_err(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)); }
static int a_vsock_socket(char *s, size_t n) { return sock_err(AF_VSOCK, SOCK_STREAM, 0); }
static int a_alg_socket(char *s, size_t n) { return sock_err(AF_ALG, SOCK_SEQPACKET, 0); }
static int a_key_socket(char *s, size_t n) { return sock_err(AF_KEY, SOCK_RAW, 2 /* PF_KEY_V2 */); }
static int a_socketpair_packet(char *s, size_t n) {
    int sv[2];
    return err(socketpair(AF_PACKET, SOCK_RAW, 0, sv));
}

/* Sends one netlink request and returns 0 or the errno of the first
 * NLMSG_ERROR; names of links seen in a dump go to `seen`. */
static int nl_request(int proto, struct nlmsghdr *req, char *seen, size_t n) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, proto);
    if (fd < 0) return errno;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    if (sendto(fd, req, req->nlmsg_len, 0, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        return e;
    }
    char buf[16384];
    size_t used = 0;
    if (n) seen[0] = 0;
    for (;;) {
        ssize_t len = recv(fd, buf, sizeof buf, 0);
        if (len < 0) {
            int e = errno;
            close(fd);
            return e;
        }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)len); h = NLMSG_NEXT(h, len)) {
            if (h->nlmsg_type == NLMSG_DONE) {
                close(fd);
                return 0;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *e = NLMSG_DATA(h);
                close(fd);
                return -e->error;
            }
            if (h->nlmsg_type == RTM_NEWLINK) {
                struct ifinfomsg *ifi = NLMSG_DATA(h);
                int alen = h->nlmsg_len - NLMSG_LENGTH(sizeof *ifi);
                for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
                    if (a->rta_type == IFLA_IFNAME && used + strlen(RTA_DATA(a)) + 2 < n) {
                        used += sprintf(seen + used, "%s%s", used ? "," : "", (char *)RTA_DATA(a));
                    }
                }
            }
        }
    }
}

static int a_netlink_route_dump(char *s, size_t n) {
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
    } req = {.h = {.nlmsg_len = sizeof req, .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1}};
    return nl_request(NETLINK_ROUTE, &req.h, s, n);
}

/* Creating an interface (a dummy link): needs CAP_NET_ADMIN. */
static int a_netlink_route_newlink(char *s, size_t n) {
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
        char attrs[64];
    } req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_type = RTM_NEWLINK;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    req.h.nlmsg_seq = 1;
    size_t off = NLMSG_ALIGN(NLMSG_LENGTH(sizeof req.i));
    struct rtattr *name = (struct rtattr *)((char *)&req + off);
    name->rta_type = IFLA_IFNAME;
    name->rta_len = RTA_LENGTH(7);
    memcpy(RTA_DATA(name), "escape", 7);
    off += RTA_ALIGN(name->rta_len);
    struct rtattr *info = (struct rtattr *)((char *)&req + off);
    info->rta_type = IFLA_LINKINFO;
    struct rtattr *kind = (struct rtattr *)RTA_DATA(info);
    kind->rta_type = IFLA_INFO_KIND;
    kind->rta_len = RTA_LENGTH(6);
    memcpy(RTA_DATA(kind), "dummy", 6);
    info->rta_len = RTA_LENGTH(RTA_ALIGN(kind->rta_len));
    off += RTA_ALIGN(info->rta_len);
    req.h.nlmsg_len = off;
    return nl_request(NETLINK_ROUTE, &req.h, NULL, 0);
}

/* Takes link `index` down (RTM_NEWLINK clearing IFF_UP). */
static int link_down(int index) {
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
    } req;
    if (!index) return ENODEV;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = RTM_NEWLINK;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    req.i.ifi_index = index;
    req.i.ifi_change = 1; /* IFF_UP */
    req.i.ifi_flags = 0;
    return nl_request(NETLINK_ROUTE, &req.h, NULL, 0);
}

/* Taking lo down: needs CAP_NET_ADMIN too. */
static int a_netlink_route_setlink(char *s, size_t n) { return link_down(1); }

/* The sandbox's own link (eth0, the daemon's veth end): taking it down,
 * giving it another address (a forged source), routing through it. */
static int a_eth0_down(char *s, size_t n) { return link_down((int)if_nametoindex("eth0")); }

/* Appends attribute `type` (`len` bytes of `data`) to netlink message `h`
 * (whose buffer has room). */
static void nl_attr(struct nlmsghdr *h, unsigned short type, const void *data, size_t len) {
    struct rtattr *a = (struct rtattr *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
    a->rta_type = type;
    a->rta_len = RTA_LENGTH(len);
    memcpy(RTA_DATA(a), data, len);
    h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* A request of `type` creating something on eth0: RTM_NEWADDR gives it
 * 203.0.113.99/32, RTM_NEWROUTE routes 203.0.113.0/24 through it. */
static int eth0_create(unsigned short type) {
    struct {
        struct nlmsghdr h;
        union {
            struct ifaddrmsg a;
            struct rtmsg r;
        } m;
        char attrs[32];
    } req;
    int oif = (int)if_nametoindex("eth0");
    if (!oif) return ENODEV;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_type = type;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    if (type == RTM_NEWADDR) {
        unsigned char addr[4] = {203, 0, 113, 99};
        req.h.nlmsg_len = NLMSG_LENGTH(sizeof req.m.a);
        req.m.a.ifa_family = AF_INET;
        req.m.a.ifa_prefixlen = 32;
        req.m.a.ifa_index = oif;
        nl_attr(&req.h, IFA_LOCAL, addr, 4);
    } else {
        unsigned char net[4] = {203, 0, 113, 0};
        req.h.nlmsg_len = NLMSG_LENGTH(sizeof req.m.r);
        req.m.r.rtm_family = AF_INET;
        req.m.r.rtm_dst_len = 24;
        req.m.r.rtm_table = RT_TABLE_MAIN;
        req.m.r.rtm_protocol = RTPROT_STATIC;
        req.m.r.rtm_scope = RT_SCOPE_LINK;
        req.m.r.rtm_type = RTN_UNICAST;
        nl_attr(&req.h, RTA_DST, net, 4);
        nl_attr(&req.h, RTA_OIF, &oif, 4);
    }
    return nl_request(NETLINK_ROUTE, &req.h, NULL, 0);
}

static int a_eth0_newaddr(char *s, size_t n) { return eth0_create(RTM_NEWADDR); }

static int a_eth0_newroute(char *s, size_t n) { return eth0_create(RTM_NEWROUTE); }

static int a_netlink_audit_get(char *s, size_t n) {
    struct nlmsghdr req = {.nlmsg_len = NLMSG_LENGTH(0), .nlmsg_type = AUDIT_GET, .nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK, .nlmsg_seq = 1};
    return nl_request(NETLINK_AUDIT, &req, NULL, 0);
}

/* Host device events (a classic information channel). */
static int a_netlink_uevent_bind(char *s, size_t n) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
    if (fd < 0) return errno;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = 1};
    int e = err(bind(fd, (struct sockaddr *)&sa, sizeof sa));
    close(fd);
    return e;
}

static int a_netlink_sock_diag(char *s, size_t n) { return sock_err(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG); }
static int a_netlink_generic(char *s, size_t n) { return sock_err(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC); }
static int a_netlink_netfilter(char *s, size_t n) { return sock_err(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER); }
static int a_netlink_xfrm(char *s, size_t n) { return sock_err(AF_NETLINK, SOCK_RAW, NETLINK_XFRM); }
static int a_netlink_crypto(char *s, size_t n) { return sock_err(AF_NETLINK, SOCK_RAW, NETLINK_CRYPTO); }

static int write_file(const char *path, const char *data) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    int e = err(write(fd, data, strlen(data)));
    close(fd);
    return e;
}

static int a_proc_sys_core_pattern(char *s, size_t n) { return write_file("/proc/sys/kernel/core_pattern", "|/tmp/x"); }
static int a_proc_sys_drop_caches(char *s, size_t n) { return write_file("/proc/sys/vm/drop_caches", "3"); }
static int a_proc_sys_ip_forward(char *s, size_t n) { return write_file("/proc/sys/net/ipv4/ip_forward", "1"); }
static int a_proc_sysrq_trigger(char *s, size_t n) { return write_file("/proc/sysrq-trigger", "h"); }
static int a_sys_uevent_helper(char *s, size_t n) { return write_file("/sys/kernel/uevent_helper", "/tmp/x"); }
static int a_sys_thp(char *s, size_t n) { return write_file("/sys/kernel/mm/transparent_hugepage/enabled", "never"); }
static int a_sys_lo_mtu(char *s, size_t n) { return write_file("/sys/class/net/lo/mtu", "1280"); }
static int a_sys_create_file(char *s, size_t n) {
    int fd = open("/sys/escape", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return errno;
    close(fd);
    return 0;
}

/* Reads one byte; a read of nothing (a file masked with /dev/null) is
 * reported as "ok:empty". */
static int read_one_seen(const char *path, char *s, size_t n) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    char c;
    ssize_t r = read(fd, &c, 1);
    int e = r < 0 ? errno : 0;
    if (r == 0 && n) snprintf(s, n, "empty");
    close(fd);
    return e;
}
#define read_one(path) read_one_seen(path, s, n)

static int a_proc_1_environ(char *s, size_t n) { return read_one("/proc/1/environ"); }
static int a_proc_1_mem(char *s, size_t n) { return read_one("/proc/1/mem"); }
static int a_proc_1_root(char *s, size_t n) {
    char buf[256];
    return err(readlink("/proc/1/root", buf, sizeof buf));
}
static int a_proc_1_fd(char *s, size_t n) {
    int fd = open("/proc/1/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno;
    close(fd);
    return 0;
}
static int a_proc_kcore(char *s, size_t n) { return read_one("/proc/kcore"); }
static int a_dev_kmsg(char *s, size_t n) { return read_one("/dev/kmsg"); }
static int a_dev_mem(char *s, size_t n) { return read_one("/dev/mem"); }

static int connect_to(struct sockaddr *sa, socklen_t len, int domain) {
    int fd = socket(domain, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    int e = err(connect(fd, sa, len));
    close(fd);
    return e;
}

static int connect_unix(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return ENAMETOOLONG;
    strcpy(sa.sun_path, path);
    return connect_to((struct sockaddr *)&sa, sizeof sa, AF_UNIX);
}

/* Control: the sandbox's own loopback carries a connection. */
static int a_loopback_self(char *s, size_t n) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 1) < 0 ||
        getsockname(l, (struct sockaddr *)&sa, &len) < 0)
        return errno;
    int e = connect_to((struct sockaddr *)&sa, sizeof sa, AF_INET);
    close(l);
    return e;
}

static int a_docker_socket(char *s, size_t n) { return connect_unix("/var/run/docker.sock"); }
static int a_containerd_socket(char *s, size_t n) { return connect_unix("/run/containerd/containerd.sock"); }

/* i386 ABI (int 0x80) getpid: another architecture for seccomp. */
static int a_int80_getpid(char *s, size_t n) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20) : "memory");
    return ret < 0 ? (int)-ret : 0;
}

/* x32 ABI keyctl: the x86-64 architecture with bit 30 set in the number. */
static int a_x32_keyctl(char *s, size_t n) { return err(syscall(0x40000000 | SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1)); }

static const struct {
    const char *name;
    attempt_fn fn;
} ATTEMPTS[] = {
#define A(x) {#x, a_##x}
    A(mount), A(umount), A(fsopen), A(open_tree), A(pivot_root), A(chroot),
    A(unshare_user), A(unshare_mount), A(unshare_net), A(unshare_pid), A(unshare_cgroup),
    A(clone_newuser), A(clone3_newuser), A(setns), A(setuid_root), A(sethostname),
    A(ptrace_attach_1), A(ptrace_seize_1), A(process_vm_readv_1), A(kill_1), A(ptrace_own_child),
    A(keyctl), A(add_key), A(request_key), A(bpf_map), A(bpf_prog), A(perf_event_open),
    A(io_uring_setup), A(userfaultfd), A(dev_userfaultfd), A(name_to_handle_at),
    A(open_by_handle_at), A(init_module), A(finit_module), A(delete_module), A(kexec_load),
    A(iopl), A(syslog), A(reboot), A(clock_settime),
    A(mknod_char), A(mknod_block), A(mknod_fifo),
    A(raw_socket), A(raw6_socket), A(ping_socket), A(packet_socket), A(vsock_socket),
    A(alg_socket), A(key_socket), A(socketpair_packet),
    A(netlink_route_dump), A(netlink_route_newlink), A(netlink_route_setlink),
    A(eth0_down), A(eth0_newaddr), A(eth0_newroute),
    A(netlink_audit_get), A(netlink_uevent_bind), A(netlink_sock_diag), A(netlink_generic),
    A(netlink_netfilter), A(netlink_xfrm), A(netlink_crypto),
    A(proc_sys_core_pattern), A(proc_sys_drop_caches), A(proc_sys_ip_forward),
    A(proc_sysrq_trigger), A(sys_uevent_helper), A(sys_thp), A(sys_lo_mtu), A(sys_create_file),
    A(proc_1_environ), A(proc_1_mem), A(proc_1_root), A(proc_1_fd), A(proc_kcore),
    A(dev_kmsg), A(dev_mem), A(int80_getpid), A(x32_keyctl),
    A(loopback_self), A(docker_socket), A(containerd_socket),
#undef A
};

static const char *outcome(int e) {
    if (e == 0) return "ok";
    const char *name = strerrorname_np(e);
    return name ? name : "E?";
}

/* Runs `fn` in a child (a killed attempt must not end the probe) and
 * prints its line. */
static void run(const char *name, attempt_fn fn) {
    int pipefd[2];
    if (pipe(pipefd) < 0) {
        perror("pipe");
        exit(2);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        close(pipefd[0]);
        char seen[512] = "";
        int e = fn(seen, sizeof seen);
        char line[700];
        int len = snprintf(line, sizeof line, "%s%s%s", outcome(e), seen[0] ? ":" : "", seen);
        if (write(pipefd[1], line, len) < 0) _exit(3);
        _exit(0);
    }
    close(pipefd[1]);
    char line[700];
    ssize_t len = read(pipefd[0], line, sizeof line - 1);
    close(pipefd[0]);
    int status;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) {
        printf("%s killed-by-%s\n", name, sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?");
    } else if (len > 0) {
        line[len] = 0;
        printf("%s %s\n", name, line);
    } else {
        printf("%s no-report-exit-%d\n", name, WEXITSTATUS(status));
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && strcmp(argv[1], "run") == 0) {
        for (int a = 2; a < argc; a++) {
            size_t i = 0;
            while (i < sizeof ATTEMPTS / sizeof ATTEMPTS[0] && strcmp(ATTEMPTS[i].name, argv[a]) != 0) i++;
            if (i == sizeof ATTEMPTS / sizeof ATTEMPTS[0])
                printf("%s unknown-attempt\n", argv[a]);
            else
                run(ATTEMPTS[i].name, ATTEMPTS[i].fn);
        }
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "connect-unix") == 0) {
        printf("connect-unix %s\n", outcome(connect_unix(argv[2])));
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "hold") == 0) {
        /* Says so once it runs (as the probe, TOKEN in its cmdline), then
         * lets go of stdout. */
        printf("held\n");
        fflush(stdout);
        close(1);
        for (;;) pause();
    }
    if (argc == 3 && strcmp(argv[1], "connect-tcp") == 0) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        printf("connect-tcp %s\n", outcome(connect_to((struct sockaddr *)&sa, sizeof sa, AF_INET)));
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "connect-abstract") == 0) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        size_t len = strlen(argv[2]);
        if (len + 1 > sizeof sa.sun_path) return 2;
        memcpy(sa.sun_path + 1, argv[2], len);
        printf("connect-abstract %s\n", outcome(connect_to((struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + 1 + len, AF_UNIX)));
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "kill") == 0) {
        printf("kill %s\n", outcome(err(kill(atoi(argv[2]), 0))));
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "euid") == 0) {
        uid_t r, e, s;
        getresuid(&r, &e, &s);
        printf("uid %u %u %u\n", r, e, s);
        return 0;
    }
    fprintf(stderr, "usage: probe run NAME... | connect-tcp PORT | connect-abstract NAME | connect-unix PATH | kill PID | euid | hold TOKEN\n");
    return 2;
}
