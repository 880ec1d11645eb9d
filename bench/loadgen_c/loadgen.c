/*
 * The load generator: WebSocket clients on one epoll loop, one thread, in C.
 *
 * Why C: the Python client (picows on uvloop) saturated its core near 115,000 frames/s, so
 * every fan-out row above that measured the client. This one parses a server frame in a few
 * dozen instructions and keeps far ahead of any server it measures on one core; the harness
 * pins it to a core of its own and reports its CPU next to the server's (a row where it reaches
 * 90 % is still flagged "client saturated").
 *
 * Modes (`loadgen MODE --key value ...`; the result is one JSON object on stdout):
 *   fanout   N members join their rooms; K senders write round-robin whenever fewer than W
 *            lines are undelivered (W·N deliveries in flight); figure: chatMessage frames
 *            received per second over all members.
 *   latency  the same rooms, lines at a fixed total rate; every delivery's send-to-receive
 *            time (the send time, CLOCK_MONOTONIC ns, travels in the line's text).
 *   connect  N connections, --in-flight handshakes at a time (handshakes/s), idle, then the
 *            servers' RSS growth per connection.
 *   soak     N members in R rooms, lines at a fixed total rate for --seconds; one JSON line
 *            per --sample seconds (servers' RSS and open descriptors, deliveries, drops);
 *            at the end every member's count is checked against its room's lines.
 *   trace    latency's load; --trace-file gets "S sent_ns" for every line sent and
 *            "R sent_ns recv_ns" for every delivery to member 0 (failover: when did lines
 *            arrive again, which never did).
 *
 * Members are spread round-robin over --ports (several nodes of a cluster) and over
 * --event-ids (rooms); tokens are read from --tokens (one JWT a line, forged by the harness).
 * Every loop is bounded in time, and the only target is 127.0.0.1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#define TEXT_BYTES 64        /* every chat line's text: "~<send ns>~" padded with 'x' */
#define MAX_PORTS 16
#define MAX_PIDS 16
#define MAX_EVENTS 1024
#define READ_CHUNK 65536

enum state { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_OPEN, S_CLOSED };

typedef struct member {
    int fd;
    int index;
    int room;
    int port;
    enum state state;
    int has_chat;        /* has had a chatMessage since the counters were last zeroed */
    long received;       /* chatMessage frames since the counters were last zeroed */
    char *in;            /* bytes read and not yet parsed */
    size_t in_len, in_cap;
    char *out;           /* bytes not yet written (the socket was full) */
    size_t out_len, out_cap;
    int want_out;
    int reading;         /* counted as reading (soak): open and had its first line */
} member_t;

typedef struct room {
    long members;        /* members open in this room */
    long sent;           /* lines sent to this room since the counters were zeroed */
    long expected;       /* sum over its members of lines they must get */
    int *senders;        /* member indexes */
    int n_senders;
    long next_sender;
} room_t;

/* Options. */
static const char *mode = "fanout";
static int ports[MAX_PORTS], n_ports;
static char **event_ids; static int n_rooms;
static const char *tokens_path;
static int server_pids[MAX_PIDS], n_pids;
static int extra_pids[MAX_PIDS], n_extra;  /* helpers of the servers (Redis): CPU apart */
static long n_members = 100;
static int senders_per_room = 10;
static long window_lines = 16;
static double rate = 100.0;      /* lines per second, over all rooms */
static int in_flight = 50;
static double warmup = 1.0, seconds = 5.0, idle_s = 2.0;
static double connect_budget = 60.0, settle_budget = 30.0, sample_s = 60.0;
static const char *trace_path;

/* State. */
static int ep;
static member_t *members;
static room_t *rooms;
static char **tokens; static long n_tokens;
static long expected_sum;
static long received_total, sent_total, closed_total, reached_total, open_total;
static long connect_failures;
static int sending;              /* fanout: a delivery may trigger the next line */
static long slack;               /* fanout: (window - 1) * members */
static int64_t window_start_ns = INT64_MAX, window_end_ns = INT64_MAX;
static int64_t *delays; static size_t n_delays, cap_delays;
static FILE *trace_file;
static uint32_t rng = 2463534242u;
static char pad[TEXT_BYTES];

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double now_s(void) { return now_ns() / 1e9; }

static uint32_t xorshift(void) {
    rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5;
    return rng;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(p, c * elem);
    if (!q) die("realloc");
    *cap = c;
    return q;
}

/* CPU and memory of processes, from /proc. */

static double ticks;

static double proc_cpu(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    /* fields after the command: state(3) ... utime(14) stime(15) */
    unsigned long utime = 0, stime = 0;
    int field = 2;
    for (char *s = p + 1; *s && field < 15; s++) {
        if (*s == ' ') {
            field++;
            if (field == 14) utime = strtoul(s + 1, NULL, 10);
            if (field == 15) stime = strtoul(s + 1, NULL, 10);
        }
    }
    return (utime + stime) / ticks;
}

static double servers_cpu(void) {
    double sum = 0;
    for (int i = 0; i < n_pids; i++) sum += proc_cpu(server_pids[i]);
    return sum;
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec
           + ru.ru_stime.tv_usec / 1e6;
}

static double machine_cpu(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    unsigned long long user = 0, nice = 0, sys = 0;
    if (fscanf(f, "cpu %llu %llu %llu", &user, &nice, &sys) != 3) user = nice = sys = 0;
    fclose(f);
    return (user + nice + sys) / ticks;
}

static long proc_rss(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long size = 0, resident = 0;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static long servers_rss(void) {
    long sum = 0;
    for (int i = 0; i < n_pids; i++) sum += proc_rss(server_pids[i]);
    return sum;
}

static long servers_fds(void) {
    long sum = 0;
    for (int i = 0; i < n_pids; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/fd", server_pids[i]);
        DIR *d = opendir(path);
        if (!d) continue;
        struct dirent *e;
        while ((e = readdir(d))) if (e->d_name[0] != '.') sum++;
        closedir(d);
    }
    return sum;
}

static double extra_cpu(void) {
    double sum = 0;
    for (int i = 0; i < n_extra; i++) sum += proc_cpu(extra_pids[i]);
    return sum;
}

typedef struct { double t, server, client, machine, extra; long received, sent; } sample_t;

static sample_t sample(void) {
    sample_t s = {now_s(), servers_cpu(), self_cpu(), machine_cpu(), extra_cpu(),
                  received_total, sent_total};
    return s;
}

/* Sockets and frames. */

static void arm(member_t *m, int out) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0),
                             .data.ptr = m};
    m->want_out = out;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, m->fd, &ev) < 0) die("epoll_ctl mod");
}

static void close_member(member_t *m, int counted) {
    if (m->state == S_CLOSED || m->state == S_IDLE) return;
    int was_open = m->state == S_OPEN;
    epoll_ctl(ep, EPOLL_CTL_DEL, m->fd, NULL);
    close(m->fd);
    m->fd = -1;
    m->state = S_CLOSED;
    m->in_len = m->out_len = 0;
    if (was_open) {
        open_total--;
        rooms[m->room].members--;
        if (counted) closed_total++;
    }
}

/* Write now what the socket takes; keep the rest for EPOLLOUT. */
static void send_bytes(member_t *m, const char *data, size_t len) {
    if (m->state != S_OPEN && m->state != S_HANDSHAKE) return;
    if (m->out_len == 0) {
        ssize_t w = write(m->fd, data, len);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) { close_member(m, 1); return; }
            w = 0;
        }
        data += w;
        len -= (size_t)w;
        if (len == 0) return;
    }
    m->out = grow(m->out, &m->out_cap, m->out_len + len, 1);
    memcpy(m->out + m->out_len, data, len);
    m->out_len += len;
    if (!m->want_out) arm(m, 1);
}

static void flush_out(member_t *m) {
    while (m->out_len) {
        ssize_t w = write(m->fd, m->out, m->out_len);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            close_member(m, 1);
            return;
        }
        memmove(m->out, m->out + w, m->out_len - (size_t)w);
        m->out_len -= (size_t)w;
    }
    arm(m, 0);
}

/* A masked client frame (FIN set) of `opcode` with `payload`. */
static void send_frame(member_t *m, int opcode, const char *payload, size_t len) {
    char frame[16 + 256];
    char *big = NULL, *f = frame;
    if (len > 256) f = big = malloc(len + 16);
    size_t h = 0;
    f[h++] = (char)(0x80 | opcode);
    if (len < 126) {
        f[h++] = (char)(0x80 | len);
    } else {
        f[h++] = (char)(0x80 | 126);
        f[h++] = (char)(len >> 8);
        f[h++] = (char)(len & 0xff);
    }
    uint32_t key = xorshift();
    unsigned char mask[4];
    memcpy(mask, &key, 4);
    memcpy(f + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++) f[h + i] = (char)(payload[i] ^ mask[i & 3]);
    send_bytes(m, f, h + len);
    free(big);
}

/* One chat line from the room's next sender, stamped with the time now. */
static void send_line(int room) {
    room_t *r = &rooms[room];
    if (r->n_senders == 0) return;
    member_t *m = &members[r->senders[r->next_sender++ % r->n_senders]];
    char text[12 + TEXT_BYTES];
    memcpy(text, "chatMessage/", 12);
    long long sent_ns = (long long)now_ns();
    int stamp = snprintf(text + 12, TEXT_BYTES + 1, "~%lld~", sent_ns);
    if (trace_file) fprintf(trace_file, "S %lld\n", sent_ns);
    memcpy(text + 12 + stamp, pad, (size_t)(TEXT_BYTES - stamp));
    send_frame(m, 1, text, 12 + TEXT_BYTES);
    r->sent++;
    r->expected += r->members;
    expected_sum += r->members;
    sent_total++;
}

static long next_room;
static void send_next(void) { send_line((int)(next_room++ % n_rooms)); }

static int64_t stamp_of(const char *p, size_t len) {
    const char *t = memchr(p, '~', len);
    if (!t) return -1;
    int64_t v = 0;
    for (t++; t < p + len && *t >= '0' && *t <= '9'; t++) v = v * 10 + (*t - '0');
    return v;
}

static int is_latency_mode(void) {
    return !strcmp(mode, "latency") || !strcmp(mode, "trace");
}

static void on_chat(member_t *m, const char *payload, size_t len) {
    received_total++;
    m->received++;
    if (!m->has_chat) { m->has_chat = 1; reached_total++; }
    if (is_latency_mode()) {
        int64_t now = now_ns();
        int64_t sent = stamp_of(payload, len);
        if (sent >= window_start_ns && sent < window_end_ns) {
            delays = grow(delays, &cap_delays, n_delays + 1, sizeof *delays);
            delays[n_delays++] = now - sent;
        }
        if (trace_file && m->index == 0) fprintf(trace_file, "R %lld %lld\n", (long long)sent,
                                                 (long long)now);
    } else if (sending && expected_sum - received_total <= slack) {
        send_next();
    }
}

/* Parse the whole frames at the start of `buf`; the bytes used, or -1 if the member closed. */
static long parse_frames(member_t *m, const char *buf, size_t n) {
    size_t pos = 0;
    while (n - pos >= 2) {
        const unsigned char *p = (const unsigned char *)buf + pos;
        int opcode = p[0] & 0x0f;
        uint64_t len = p[1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (n - pos < 4) break;
            len = ((uint64_t)p[2] << 8) | p[3];
            h = 4;
        } else if (len == 127) {
            if (n - pos < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | p[2 + i];
            h = 10;
        }
        if (p[1] & 0x80) h += 4; /* a server never masks; tolerated */
        if (n - pos < h + len) break;
        const char *payload = (const char *)p + h;
        if (opcode == 1 && len >= 12 && !memcmp(payload, "chatMessage/", 12)) {
            on_chat(m, payload, (size_t)len);
        } else if (opcode == 9) {
            send_frame(m, 10, payload, (size_t)len);  /* pong with the ping's payload */
        } else if (opcode == 8) {
            char code[2] = {0x03, (char)0xe8};  /* 1000, or echo the server's code */
            if (len >= 2) memcpy(code, payload, 2);
            send_frame(m, 8, code, 2);
            close_member(m, 1);
            return -1;
        }
        pos += h + (size_t)len;
    }
    return (long)pos;
}

/* Frames of `data`: parsed in place when nothing is pending, else after the pending bytes;
   an incomplete frame at the end is kept in m->in. Returns 0 if the member closed. */
static int take_bytes(member_t *m, const char *data, size_t n) {
    if (m->in_len) {
        m->in = grow(m->in, &m->in_cap, m->in_len + n, 1);
        memcpy(m->in + m->in_len, data, n);
        m->in_len += n;
        long used = parse_frames(m, m->in, m->in_len);
        if (used < 0) return 0;
        memmove(m->in, m->in + used, m->in_len - (size_t)used);
        m->in_len -= (size_t)used;
        return 1;
    }
    long used = parse_frames(m, data, n);
    if (used < 0) return 0;
    if ((size_t)used < n) {
        /* `data` may lie inside m->in (the rest of the handshake's read): no realloc, move */
        m->in = grow(m->in, &m->in_cap, n - (size_t)used, 1);
        memmove(m->in, data + used, n - (size_t)used);
        m->in_len = n - (size_t)used;
    }
    return 1;
}

static long opened_count, attempted, handshakes_done;
static double first_1000_s, connect_start_s;

static void start_connect(member_t *m) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)m->port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    m->fd = fd;
    m->state = S_CONNECTING;
    m->in_len = m->out_len = 0;
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.ptr = m};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
    m->want_out = 1;
    attempted++;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close_member(m, 0);
        m->state = S_CLOSED;
        connect_failures++;
    }
}

static void send_handshake(member_t *m) {
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET /api/v1/websockets/event?accessToken=%s&eventId=%s HTTP/1.1\r\n"
                     "Host: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     tokens[m->index % n_tokens], event_ids[m->room], m->port);
    m->state = S_HANDSHAKE;
    arm(m, 0);
    send_bytes(m, req, (size_t)n);
}

static void handshake_failed(member_t *m) {
    close_member(m, 0);
    m->state = S_CLOSED;
    connect_failures++;
    handshakes_done++;
}

static char readbuf[READ_CHUNK];

static void on_readable(member_t *m) {
    for (;;) {
        ssize_t r = read(m->fd, readbuf, sizeof readbuf);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (m->state == S_HANDSHAKE) handshake_failed(m); else close_member(m, 1);
            return;
        }
        if (r == 0) {
            if (m->state == S_HANDSHAKE) handshake_failed(m); else close_member(m, 1);
            return;
        }
        if (m->state == S_HANDSHAKE) {
            m->in = grow(m->in, &m->in_cap, m->in_len + (size_t)r, 1);
            memcpy(m->in + m->in_len, readbuf, (size_t)r);
            m->in_len += (size_t)r;
            char *end = memmem(m->in, m->in_len, "\r\n\r\n", 4);
            if (!end) continue;
            if (m->in_len < 12 || memcmp(m->in + 9, "101", 3)) { handshake_failed(m); return; }
            size_t head = (size_t)(end + 4 - m->in);
            size_t rest = m->in_len - head;
            m->state = S_OPEN;
            open_total++;
            rooms[m->room].members++;
            opened_count++;
            handshakes_done++;
            if (opened_count == 1000 || (opened_count == n_members && n_members < 1000))
                first_1000_s = now_s() - connect_start_s;
            m->in_len = 0;
            if (rest && !take_bytes(m, end + 4, rest)) return;
        } else if (!take_bytes(m, readbuf, (size_t)r)) {
            return;
        }
        if ((size_t)r < sizeof readbuf) return;
    }
}

static void on_event(struct epoll_event *ev) {
    member_t *m = ev->data.ptr;
    if (m->state == S_CLOSED || m->state == S_IDLE) return;
    if (m->state == S_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(m->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err || (ev->events & (EPOLLERR | EPOLLHUP))) { handshake_failed(m); return; }
        send_handshake(m);
        return;
    }
    if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(m);
    if (m->state != S_CLOSED && (ev->events & EPOLLOUT)) flush_out(m);
}

/* Run the loop until `deadline` (seconds) or until `until()` is true. */
static void loop_until(double deadline, int (*until)(void)) {
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        if (until && until()) return;
        double left = deadline - now_s();
        if (left <= 0) return;
        int timeout = (int)(left * 1000) + 1;
        if (timeout > 50) timeout = 50;
        int n = epoll_wait(ep, evs, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) on_event(&evs[i]);
    }
}

/* Phases. */

static long next_to_connect;
static double connect_deadline;

static int connect_done(void) {
    while (next_to_connect < n_members && attempted - handshakes_done < in_flight
           && now_s() < connect_deadline) {
        start_connect(&members[next_to_connect++]);
        if (members[next_to_connect - 1].state == S_CLOSED) handshakes_done++;
    }
    return handshakes_done >= n_members || (next_to_connect >= n_members
                                            && attempted == handshakes_done);
}

static void print_connect(FILE *out, double secs) {
    fprintf(out, "\"members\": %ld, \"connect_failures\": %ld, \"connect_seconds\": %.6f, "
            "\"handshakes_per_s\": %.3f, \"handshakes_per_s_first_1000\": %.3f",
            opened_count, connect_failures, secs, opened_count / secs,
            first_1000_s > 0 ? (opened_count < 1000 ? opened_count : 1000) / first_1000_s : 0.0);
}

static double connect_all(void) {
    connect_start_s = now_s();
    connect_deadline = connect_start_s + connect_budget;
    loop_until(connect_deadline + 15.0, connect_done);  /* handshakes in flight may finish */
    /* Give up on the ones still pending past the budget. */
    for (long i = 0; i < n_members; i++)
        if (members[i].state == S_CONNECTING || members[i].state == S_HANDSHAKE)
            handshake_failed(&members[i]);
    return now_s() - connect_start_s;
}

static void choose_senders(void) {
    for (int r = 0; r < n_rooms; r++) rooms[r].n_senders = 0;
    for (long i = 0; i < n_members; i++) {
        member_t *m = &members[i];
        room_t *r = &rooms[m->room];
        if (m->state == S_OPEN && r->n_senders < senders_per_room)
            r->senders[r->n_senders++] = (int)i;
    }
}

static void zero_counters(void) {
    received_total = sent_total = expected_sum = 0;
    for (int r = 0; r < n_rooms; r++) rooms[r].sent = rooms[r].expected = 0;
    for (long i = 0; i < n_members; i++) members[i].received = 0;
    n_delays = 0;
}

/* Every member in its room: marker lines until each open member has had one; then zero. */
static int settle(void) {
    double deadline = now_s() + settle_budget;
    while (reached_total < open_total && now_s() < deadline) {
        long before = received_total;
        for (int r = 0; r < n_rooms; r++) send_line(r);
        long last = -1;
        while ((last != received_total || last == before) && now_s() < deadline) {
            last = received_total;
            loop_until(now_s() + 0.2, NULL);
        }
    }
    zero_counters();
    return reached_total >= open_total;
}

static long expected_total(void) {
    long e = 0;
    for (int r = 0; r < n_rooms; r++) e += rooms[r].expected;
    return e;
}

static int drained(void) { return received_total >= expected_total(); }

static long drain(double budget) {
    loop_until(now_s() + budget, drained);
    long missing = expected_total() - received_total;
    return missing > 0 ? missing : 0;
}

/* Lines at `rate` per second for `secs`: late wake-ups catch up; at least one line. */
static void pace(double secs) {
    double start = now_s();
    long total = (long)(rate * secs + 0.999999);
    if (total < 1) total = 1;
    struct epoll_event evs[MAX_EVENTS];
    for (long k = 0; k < total;) {
        double due = start + k / rate;
        double left = due - now_s();
        if (left <= 0) { send_next(); k++; continue; }
        int timeout = (int)(left * 1000);
        int n = epoll_wait(ep, evs, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) on_event(&evs[i]);
    }
    loop_until(start + secs, NULL);
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(double q) {
    if (!n_delays) return -1;
    size_t i = (size_t)(q * n_delays);
    if (i >= n_delays) i = n_delays - 1;
    return delays[i] / 1e6;
}

static void print_rates(sample_t a, sample_t b) {
    double wall = b.t - a.t, server = b.server - a.server, client = b.client - a.client;
    double extra = b.extra - a.extra;
    double other = b.machine - a.machine - server - client - extra;
    printf(", \"seconds\": %.6f, \"server_cpu\": %.4f, \"client_cpu\": %.4f, "
           "\"other_cpu\": %.4f", wall, server / wall, client / wall,
           other > 0 ? other / wall : 0.0);
    if (n_extra) printf(", \"extra_cpu\": %.4f", extra / wall);
}

static void close_all(void) {
    for (long i = 0; i < n_members; i++) close_member(&members[i], 0);
}

static int run_room(void) {
    printf("{");
    double secs = connect_all();
    print_connect(stdout, secs);
    choose_senders();
    int any = 0;
    for (int r = 0; r < n_rooms; r++) any |= rooms[r].n_senders > 0;
    if (!any) {
        printf(", \"error\": \"no member could connect\"}\n");
        return 0;
    }
    printf(", \"settled\": %s", settle() ? "true" : "false");
    sample_t a, b;
    if (!strcmp(mode, "fanout")) {
        slack = (window_lines - 1) * open_total;
        sending = 1;
        for (long i = 0; i < window_lines; i++) send_next();
        loop_until(now_s() + warmup, NULL);
        a = sample();
        loop_until(now_s() + seconds, NULL);
        b = sample();
        sending = 0;
    } else {
        pace(warmup);
        a = sample();
        fprintf(stderr, "window\n");  /* for a harness acting during the window (failover) */
        fflush(stderr);
        window_start_ns = now_ns();
        pace(seconds);
        window_end_ns = now_ns();
        b = sample();
    }
    print_rates(a, b);
    double wall = b.t - a.t;
    printf(", \"delivered_per_s\": %.3f, \"sent_per_s\": %.3f",
           (b.received - a.received) / wall, (b.sent - a.sent) / wall);
    long undelivered = drain(5.0);
    printf(", \"undelivered\": %ld, \"disconnected\": %ld", undelivered, closed_total);
    if (is_latency_mode()) {
        qsort(delays, n_delays, sizeof *delays, cmp64);
        printf(", \"samples\": %zu", n_delays);
        if (n_delays)
            printf(", \"p50_ms\": %.4f, \"p99_ms\": %.4f, \"max_ms\": %.4f", pct(0.5), pct(0.99),
                   delays[n_delays - 1] / 1e6);
    }
    printf("}\n");
    close_all();
    return 0;
}

static int run_connect(void) {
    loop_until(now_s() + 0.5, NULL);
    long rss_before = servers_rss();
    sample_t a = sample();
    double secs = connect_all();
    sample_t b = sample();
    printf("{");
    print_connect(stdout, secs);
    print_rates(a, b);
    loop_until(now_s() + idle_s, NULL);
    long rss_after = servers_rss();
    long opened = opened_count ? opened_count : 1;
    printf(", \"rss_before\": %ld, \"rss_after\": %ld, \"rss_per_connection_kib\": %.3f, "
           "\"disconnected\": %ld}\n", rss_before, rss_after,
           (rss_after - rss_before) / (double)opened / 1024.0, closed_total);
    close_all();
    return 0;
}

/* Soak: lines at `rate` over all rooms for `seconds`, a JSON line every `sample_s`. */
static int run_soak(void) {
    double secs = connect_all();
    choose_senders();
    printf("{\"phase\": \"joined\", ");
    print_connect(stdout, secs);
    int settled = settle();
    printf(", \"settled\": %s, \"open\": %ld}\n", settled ? "true" : "false", open_total);
    fflush(stdout);
    /* Members open now are the ones that must stay: a drop of any of them is a failure. */
    for (long i = 0; i < n_members; i++) members[i].reading = members[i].state == S_OPEN;
    double start = now_s();
    sample_t last = sample();
    int minute = 0;
    while (now_s() - start < seconds - 1e-6) {
        double chunk = sample_s;
        if (start + (minute + 1) * sample_s > start + seconds)
            chunk = start + seconds - now_s();
        pace(chunk);
        minute++;
        sample_t s = sample();
        double wall = s.t - last.t;
        printf("{\"phase\": \"sample\", \"t\": %.3f, \"server_rss\": %ld, \"server_fds\": %ld, "
               "\"client_open\": %ld, \"dropped\": %ld, \"sent\": %ld, \"received\": %ld, "
               "\"server_cpu\": %.4f, \"client_cpu\": %.4f}\n", s.t - start, servers_rss(),
               servers_fds(), open_total, closed_total, sent_total, received_total,
               (s.server - last.server) / wall, (s.client - last.client) / wall);
        fflush(stdout);
        last = s;
    }
    long undelivered = drain(10.0);
    long missed_members = 0, missed_lines = 0, dropped_reading = 0;
    for (long i = 0; i < n_members; i++) {
        member_t *m = &members[i];
        if (!m->reading) continue;
        if (m->state != S_OPEN) { dropped_reading++; continue; }
        long want = rooms[m->room].sent;
        if (m->received < want) { missed_members++; missed_lines += want - m->received; }
    }
    printf("{\"phase\": \"end\", \"seconds\": %.3f, \"sent\": %ld, \"received\": %ld, "
           "\"undelivered\": %ld, \"members_missing_lines\": %ld, \"lines_missed\": %ld, "
           "\"dropped_reading\": %ld, \"open\": %ld}\n", now_s() - start, sent_total,
           received_total, undelivered, missed_members, missed_lines, dropped_reading,
           open_total);
    close_all();
    return 0;
}

/* Options. */

static void split_ints(const char *s, int *out, int *n, int max) {
    char *copy = strdup(s), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t && *n < max; t = strtok_r(NULL, ",", &save))
        out[(*n)++] = atoi(t);
    free(copy);
}

static void read_tokens(void) {
    FILE *f = fopen(tokens_path, "r");
    if (!f) die(tokens_path);
    size_t cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) > 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len) continue;
        tokens = grow(tokens, &cap, (size_t)n_tokens + 1, sizeof *tokens);
        tokens[n_tokens++] = strdup(line);
    }
    free(line);
    fclose(f);
    if (!n_tokens) { fprintf(stderr, "loadgen: no token in %s\n", tokens_path); exit(2); }
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen fanout|latency|connect|soak|trace --ports P[,P…] "
            "--event-ids ID[,ID…] --tokens FILE --server-pids PID[,PID…] --n N [options]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    mode = argv[1];
    const char *events_arg = NULL;
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--ports")) split_ints(v, ports, &n_ports, MAX_PORTS);
        else if (!strcmp(k, "--event-ids")) events_arg = v;
        else if (!strcmp(k, "--tokens")) tokens_path = v;
        else if (!strcmp(k, "--server-pids")) split_ints(v, server_pids, &n_pids, MAX_PIDS);
        else if (!strcmp(k, "--extra-pids")) split_ints(v, extra_pids, &n_extra, MAX_PIDS);
        else if (!strcmp(k, "--n")) n_members = atol(v);
        else if (!strcmp(k, "--senders")) senders_per_room = atoi(v);
        else if (!strcmp(k, "--window")) window_lines = atol(v);
        else if (!strcmp(k, "--rate")) rate = atof(v);
        else if (!strcmp(k, "--in-flight")) in_flight = atoi(v);
        else if (!strcmp(k, "--warmup")) warmup = atof(v);
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--idle")) idle_s = atof(v);
        else if (!strcmp(k, "--connect-budget")) connect_budget = atof(v);
        else if (!strcmp(k, "--settle-budget")) settle_budget = atof(v);
        else if (!strcmp(k, "--sample")) sample_s = atof(v);
        else if (!strcmp(k, "--trace-file")) trace_path = v;
        else usage();
    }
    if (!n_ports || !events_arg || !tokens_path || n_members < 1) usage();
    if (rate <= 0) rate = 1;
    {
        char *copy = strdup(events_arg), *save = NULL;
        size_t cap = 0;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            event_ids = grow(event_ids, &cap, (size_t)n_rooms + 1, sizeof *event_ids);
            event_ids[n_rooms++] = t;
        }
    }
    ticks = (double)sysconf(_SC_CLK_TCK);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    memset(pad, 'x', sizeof pad);
    rng ^= (uint32_t)getpid();
    read_tokens();
    if (trace_path && !(trace_file = fopen(trace_path, "w"))) die(trace_path);
    ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    members = calloc((size_t)n_members, sizeof *members);
    rooms = calloc((size_t)n_rooms, sizeof *rooms);
    for (int r = 0; r < n_rooms; r++) rooms[r].senders = calloc((size_t)senders_per_room + 1,
                                                                 sizeof(int));
    for (long i = 0; i < n_members; i++) {
        members[i].index = (int)i;
        members[i].fd = -1;
        members[i].room = (int)(i % n_rooms);
        /* ports alternate within a room: member i's room is i % R, its port (i / R) % P */
        members[i].port = ports[(i / n_rooms) % n_ports];
    }
    int rc;
    if (!strcmp(mode, "connect")) rc = run_connect();
    else if (!strcmp(mode, "soak")) rc = run_soak();
    else if (!strcmp(mode, "fanout") || is_latency_mode()) rc = run_room();
    else usage(), rc = 2;
    fflush(stdout);
    if (trace_file) fclose(trace_file);
    return rc;
}
