/* The ports suite's server (tests/ports.rs): started inside a sandbox, it
 * listens on a TCP port and answers the proxy's tests. Static, so it runs
 * in every image (the docker pass's image has no python3).
 *
 *   server PORT [ADDR]   listen on ADDR (default 127.0.0.1; "::1", "0.0.0.0"),
 *                        then detach: the command returns once it listens.
 *
 * One process per connection, one request per connection (Connection: close):
 *   /echo        200, body: "METHOD TARGET\n", the request's header lines, a
 *                blank line, then the request body
 *   /count       reads the body (Content-Length or chunked) and answers
 *                "bytes N sum S" (S: the sum of all bytes mod 2^32)
 *   /bytes/N     200 with N bytes of the pattern i % 251
 *   /sse         text/event-stream: events 0, 1, 2, 300 ms apart
 *   /slow        waits 3 s, then 200 "slow"
 *   /ws          WebSocket (RFC 6455) echo of text and binary frames
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int writeall(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ---- buffered reads of the connection ---- */
static char rbuf[65536];
static size_t rpos, rlen;
static int cfd;

static ssize_t rread(void *out, size_t n) {
    if (rpos == rlen) {
        ssize_t r = read(cfd, rbuf, sizeof rbuf);
        if (r <= 0) return r;
        rpos = 0;
        rlen = (size_t)r;
    }
    size_t k = rlen - rpos < n ? rlen - rpos : n;
    memcpy(out, rbuf + rpos, k);
    rpos += k;
    return (ssize_t)k;
}

static int rexact(void *out, size_t n) {
    char *p = out;
    while (n > 0) {
        ssize_t r = rread(p, n);
        if (r <= 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* A line without its CRLF; -1 at the end. */
static int rline(char *out, size_t cap) {
    size_t n = 0;
    char c;
    while (rexact(&c, 1) == 0) {
        if (c == '\n') {
            if (n > 0 && out[n - 1] == '\r') n--;
            out[n] = 0;
            return (int)n;
        }
        if (n + 1 < cap) out[n++] = c;
    }
    return -1;
}

/* ---- SHA-1 (FIPS 180-4), for Sec-WebSocket-Accept ---- */
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char *m = calloc(total, 1);
    memcpy(m, msg, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) m[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 |
                   (uint32_t)m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
            else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6; }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    free(m);
    for (int i = 0; i < 20; i++) out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const unsigned char *in, size_t n, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- handlers ---- */
static void respond(int status, const char *type, const char *body, size_t n) {
    char head[256];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, type, n);
    writeall(cfd, head, (size_t)h);
    writeall(cfd, body, n);
}

/* Feeds the request body to `sink` (Content-Length or chunked). */
static long long read_body(long long clen, int chunked, void (*sink)(const char *, size_t)) {
    char buf[65536];
    long long total = 0;
    if (chunked) {
        char line[128];
        for (;;) {
            if (rline(line, sizeof line) < 0) return -1;
            long long size = strtoll(line, NULL, 16);
            if (size == 0) {
                while (rline(line, sizeof line) > 0) {}
                return total;
            }
            while (size > 0) {
                size_t want = size < (long long)sizeof buf ? (size_t)size : sizeof buf;
                ssize_t r = rread(buf, want);
                if (r <= 0) return -1;
                sink(buf, (size_t)r);
                size -= r;
                total += r;
            }
            rline(line, sizeof line);
        }
    }
    while (total < clen) {
        size_t want = clen - total < (long long)sizeof buf ? (size_t)(clen - total) : sizeof buf;
        ssize_t r = rread(buf, want);
        if (r <= 0) return -1;
        sink(buf, (size_t)r);
        total += r;
    }
    return total;
}

static char *echo_buf;
static size_t echo_len, echo_cap;
static void echo_sink(const char *p, size_t n) {
    if (echo_len + n > echo_cap) {
        echo_cap = (echo_len + n) * 2;
        echo_buf = realloc(echo_buf, echo_cap);
    }
    memcpy(echo_buf + echo_len, p, n);
    echo_len += n;
}

static uint32_t count_sum;
static void count_sink(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) count_sum += (unsigned char)p[i];
}

static void websocket(const char *key) {
    char src[256];
    unsigned char digest[20];
    char accept[64];
    snprintf(src, sizeof src, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    sha1((unsigned char *)src, strlen(src), digest);
    base64(digest, 20, accept);
    char head[256];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    writeall(cfd, head, (size_t)h);
    for (;;) {
        unsigned char hdr[2], mask[4];
        if (rexact(hdr, 2) < 0) return;
        int opcode = hdr[0] & 15;
        uint64_t len = hdr[1] & 127;
        if (len == 126) {
            unsigned char l[2];
            if (rexact(l, 2) < 0) return;
            len = (uint64_t)l[0] << 8 | l[1];
        } else if (len == 127) {
            unsigned char l[8];
            if (rexact(l, 8) < 0) return;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | l[i];
        }
        if (len > (1 << 24)) return;
        if ((hdr[1] & 128) && rexact(mask, 4) < 0) return;
        unsigned char *payload = malloc(len + 1);
        if (rexact(payload, len) < 0) return;
        if (hdr[1] & 128)
            for (uint64_t i = 0; i < len; i++) payload[i] ^= mask[i % 4];
        unsigned char out[10];
        size_t o = 0;
        out[o++] = (unsigned char)(0x80 | opcode);
        if (len < 126) out[o++] = (unsigned char)len;
        else if (len < 65536) { out[o++] = 126; out[o++] = (unsigned char)(len >> 8); out[o++] = (unsigned char)len; }
        else { out[o++] = 127; for (int i = 7; i >= 0; i--) out[o++] = (unsigned char)(len >> (8 * i)); }
        writeall(cfd, out, o);
        writeall(cfd, payload, len);
        free(payload);
        if (opcode == 8) return;
    }
}

static void serve(void) {
    char line[8192], method[16], target[4096];
    if (rline(line, sizeof line) <= 0) return;
    if (sscanf(line, "%15s %4095s", method, target) != 2) return;
    char headers[32768] = "";
    size_t hlen = 0;
    long long clen = 0;
    int chunked = 0;
    char wskey[128] = "";
    int n;
    while ((n = rline(line, sizeof line)) > 0) {
        if (hlen + (size_t)n + 2 < sizeof headers) {
            memcpy(headers + hlen, line, (size_t)n);
            hlen += (size_t)n;
            headers[hlen++] = '\n';
            headers[hlen] = 0;
        }
        if (!strncasecmp(line, "content-length:", 15)) clen = atoll(line + 15);
        if (!strncasecmp(line, "transfer-encoding:", 18) && strcasestr(line, "chunked")) chunked = 1;
        if (!strncasecmp(line, "sec-websocket-key:", 18)) {
            const char *v = line + 18;
            while (*v == ' ') v++;
            snprintf(wskey, sizeof wskey, "%.100s", v);
        }
    }
    if (n < 0) return;
    if (!strcmp(target, "/ws") && wskey[0]) {
        websocket(wskey);
    } else if (!strncmp(target, "/count", 6)) {
        long long total = read_body(clen, chunked, count_sink);
        char body[128];
        int b = snprintf(body, sizeof body, "bytes %lld sum %u", total, count_sum);
        respond(200, "text/plain", body, (size_t)b);
    } else if (!strncmp(target, "/bytes/", 7)) {
        long long total = atoll(target + 7);
        char head[256], buf[65536];
        int h = snprintf(head, sizeof head,
                         "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         "Content-Length: %lld\r\nConnection: close\r\n\r\n",
                         total);
        writeall(cfd, head, (size_t)h);
        long long i = 0;
        while (i < total) {
            size_t k = 0;
            while (k < sizeof buf && i < total) buf[k++] = (char)(i++ % 251);
            if (writeall(cfd, buf, k) < 0) return;
        }
    } else if (!strcmp(target, "/sse")) {
        const char *head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                           "Cache-Control: no-cache\r\nConnection: close\r\n\r\n";
        writeall(cfd, head, strlen(head));
        for (int i = 0; i < 3; i++) {
            if (i > 0) usleep(300 * 1000);
            char ev[64];
            int e = snprintf(ev, sizeof ev, "event: tick\ndata: %d\n\n", i);
            writeall(cfd, ev, (size_t)e);
        }
    } else if (!strcmp(target, "/clte")) {
        /* Both framings (RFC 9112 6.3: the transfer coding wins): a
           30-byte body that a Content-Length of 5 would cut. */
        const char *r = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
                        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                        "1e\r\nAAAAABBBBBCCCCCDDDDDEEEEEFFFFF\r\n0\r\n\r\n";
        writeall(cfd, r, strlen(r));
    } else if (!strcmp(target, "/slow")) {
        sleep(3);
        respond(200, "text/plain", "slow", 4);
    } else if (!strncmp(target, "/echo", 5)) {
        echo_len = 0;
        char first[4200];
        int f = snprintf(first, sizeof first, "%s %s\n", method, target);
        echo_sink(first, (size_t)f);
        echo_sink(headers, hlen);
        echo_sink("\n", 1);
        if (read_body(clen, chunked, echo_sink) < 0) return;
        respond(200, "text/plain", echo_buf, echo_len);
    } else {
        respond(404, "text/plain", "no such path", 12);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: server PORT [ADDR]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    const char *addr = argc > 2 ? argv[2] : "127.0.0.1";
    int v6 = strchr(addr, ':') != NULL;
    int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc;
    if (v6) {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
        inet_pton(AF_INET6, addr, &a.sin6_addr);
        rc = bind(s, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        inet_pton(AF_INET, addr, &a.sin_addr);
        rc = bind(s, (struct sockaddr *)&a, sizeof a);
    }
    if (rc < 0 || listen(s, 128) < 0) {
        perror("bind/listen");
        return 1;
    }
    /* Listening: detach, so the command that started it returns now. */
    if (fork() != 0) return 0;
    setsid();
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    signal(SIGCHLD, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        if (fork() == 0) {
            close(s);
            cfd = c;
            setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            serve();
            shutdown(c, SHUT_WR);
            /* Drain until the client closes, so it reads everything. */
            char sink[4096];
            while (read(c, sink, sizeof sink) > 0) {}
            _exit(0);
        }
        close(c);
    }
}
