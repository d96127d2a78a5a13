/* The relay phases' webhook receiver: a minimal HTTP/1.1 server that costs next to nothing.
 *
 *   receiver PORT ok|stall [LOG]
 *
 * One thread, one epoll loop, keep-alive, on 127.0.0.1:PORT. Built by bench/relay.py with the
 * system C compiler (`cc -O2`) into the run's temporary directory, started pinned to the CPU
 * that voltd does not use.
 *
 * ok:    every request is read whole (Content-Length body) and answered at once with an empty
 *        "200 OK". With LOG, one line per request is appended:
 *            <envelope id or -> <CLOCK_MONOTONIC ns when the request was complete>
 *        The id is the first `rfw_<8 hex>_<32 hex>` in the body (the body is the envelope,
 *        byte for byte). CLOCK_MONOTONIC is the clock of Python's time.monotonic(), so the
 *        runner compares these times with its own. Lines are buffered and written once per
 *        loop iteration, so they can be read while the receiver runs.
 * stall: connections are accepted and what they send is read and dropped; nothing is ever
 *        answered (a receiver that hangs). Nothing is logged.
 *
 * A chunked request body is not supported: it is answered 501 and the connection closed, so
 * that a client sending one fails loudly instead of being miscounted. SIGTERM or SIGINT: the
 * log is flushed and the process exits 0.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define MAX_HEADER (64 * 1024)
#define ID_LEN 45 /* rfw_ + 8 hex + _ + 32 hex */

struct conn {
    int fd;
    char *buf;
    size_t len, cap;
    char *out; /* unsent part of the answers */
    size_t out_len, out_cap;
};

static volatile sig_atomic_t stopping = 0;
static int stall = 0;
static FILE *logf = NULL;
static char *logbuf = NULL;
static size_t log_len = 0, log_cap = 0;

static const char OK[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
static const char NOT_IMPLEMENTED[] =
    "HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void *grow(void *p, size_t *cap, size_t need) {
    if (need <= *cap) return p;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n *= 2;
    void *q = realloc(p, n);
    if (!q) die("realloc");
    *cap = n;
    return q;
}

static void log_append(const char *s, size_t n) {
    logbuf = grow(logbuf, &log_cap, log_len + n);
    memcpy(logbuf + log_len, s, n);
    log_len += n;
}

static void log_flush(void) {
    if (!logf || !log_len) return;
    if (fwrite(logbuf, 1, log_len, logf) != log_len || fflush(logf) != 0) die("log");
    log_len = 0;
}

static int is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

static void log_request(const char *body, size_t n) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char line[ID_LEN + 32];
    const char *id = NULL;
    const char *p = body, *end = body + n;
    while ((p = memmem(p, (size_t)(end - p), "rfw_", 4)) != NULL) {
        if (end - p >= ID_LEN && p[12] == '_') {
            int ok = 1;
            for (int i = 4; i < ID_LEN && ok; i++) ok = i == 12 || is_hex(p[i]);
            if (ok) {
                id = p;
                break;
            }
        }
        p += 4;
    }
    int len = snprintf(line, sizeof line, "%.*s %lld\n", id ? ID_LEN : 1, id ? id : "-",
                       (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    log_append(line, (size_t)len);
}

/* The value of header `name` (lower case, with the colon) within the head, or NULL. */
static const char *header(const char *head, size_t n, const char *name) {
    size_t k = strlen(name);
    const char *p = head, *end = head + n;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol) eol = end;
        if ((size_t)(eol - p) > k && strncasecmp(p, name, k) == 0) {
            p += k;
            while (p < eol && (*p == ' ' || *p == '\t')) p++;
            return p;
        }
        p = eol + 2;
    }
    return NULL;
}

static void conn_close(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->buf);
    free(c->out);
    free(c);
}

/* Send what is queued; 0 when all is out, 1 when the socket is full, -1 on error. */
static int flush_out(struct conn *c) {
    size_t done = 0;
    while (done < c->out_len) {
        ssize_t w = send(c->fd, c->out + done, c->out_len - done, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return -1;
        }
        done += (size_t)w;
    }
    memmove(c->out, c->out + done, c->out_len - done);
    c->out_len -= done;
    return c->out_len ? 1 : 0;
}

static void queue(struct conn *c, const char *s, size_t n) {
    c->out = grow(c->out, &c->out_cap, c->out_len + n);
    memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
}

/* Answer every complete request in the buffer; -1 to close the connection. */
static int handle(struct conn *c) {
    size_t pos = 0;
    int close_after = 0;
    while (pos < c->len) {
        const char *head = c->buf + pos;
        size_t avail = c->len - pos;
        const char *sep = memmem(head, avail, "\r\n\r\n", 4);
        if (!sep) {
            if (avail > MAX_HEADER) return -1;
            break;
        }
        size_t head_len = (size_t)(sep - head) + 4;
        const char *te = header(head, head_len, "transfer-encoding:");
        if (te && strncasecmp(te, "identity", 8) != 0) {
            queue(c, NOT_IMPLEMENTED, sizeof NOT_IMPLEMENTED - 1);
            close_after = 1;
            pos = c->len;
            break;
        }
        const char *cl = header(head, head_len, "content-length:");
        size_t body = cl ? strtoul(cl, NULL, 10) : 0;
        if (avail < head_len + body) break;
        if (logf) log_request(head + head_len, body);
        queue(c, OK, sizeof OK - 1);
        pos += head_len + body;
    }
    memmove(c->buf, c->buf + pos, c->len - pos);
    c->len -= pos;
    int r = flush_out(c);
    if (r < 0 || (close_after && r == 0)) return -1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4 || (strcmp(argv[2], "ok") && strcmp(argv[2], "stall"))) {
        fprintf(stderr, "usage: %s PORT ok|stall [LOG]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    stall = strcmp(argv[2], "stall") == 0;
    if (argc == 4 && !stall) {
        logf = fopen(argv[3], "ab");
        if (!logf) die(argv[3]);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(ls, 1024) < 0) die("listen");
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0) die("epoll_ctl");
    printf("receiver: listening on 127.0.0.1:%d, mode %s%s\n", port, argv[2],
           logf ? ", logging requests" : "");
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    char scratch[65536];
    while (!stopping) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 200);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) { /* the listener */
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) die("calloc");
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) die("epoll_ctl");
                }
                continue;
            }
            if (events[i].events & EPOLLOUT) {
                int r = flush_out(c);
                if (r < 0) {
                    conn_close(ep, c);
                    continue;
                }
                if (r == 0) {
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
                }
            }
            if (!(events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) continue;
            int closed = 0;
            for (;;) {
                if (stall) {
                    ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);
                    if (r > 0) continue;
                    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                    if (r < 0 && errno == EINTR) continue;
                    closed = 1;
                    break;
                }
                c->buf = grow(c->buf, &c->cap, c->len + 16384);
                ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
                if (r > 0) {
                    c->len += (size_t)r;
                    continue;
                }
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (r < 0 && errno == EINTR) continue;
                closed = 1;
                break;
            }
            if (!stall && c->len) {
                if (handle(c) < 0) {
                    conn_close(ep, c);
                    continue;
                }
                if (c->out_len) {
                    struct epoll_event cev = {
                        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
                }
            }
            if (closed) conn_close(ep, c);
        }
        log_flush();
    }
    log_flush();
    if (logf) fclose(logf);
    return 0;
}
