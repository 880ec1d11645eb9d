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
 *   storm    a reconnect storm (bench/storm.py): N v2 members on node A (--ports A,B) over the
 *            --event-ids rooms and --b-members on B in the --b-event-ids rooms, all chatting;
 *            --probe-n handshakes to B time its handshake rate; then --signal goes to
 *            --signal-pid (node A) and every member of A reconnects to B with since=<last seq
 *            seen>, after a jittered backoff (Retry-After honoured); lines missed (seq gaps the
 *            catch-up did not fill), time until all are back, B's rooms' latency before and
 *            during, B's peak RSS.
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
    /* storm */
    int group;           /* G_A, G_B or G_PROBE */
    long since;          /* since= of the next handshake; -1: none */
    long last_seq;       /* the highest chat seq seen (v2 frames), 0 before the first */
    long gaps, dups;     /* seqs skipped over / seen again */
    int failures;        /* failed attempts since the last open socket: the backoff's doubling */
    int64_t due_ns;      /* when a pending reconnect is due */
    int back;            /* reopened on B after the signal */
    int64_t opened_ns;   /* when its socket last opened */
    long opened_since;   /* the since= of that socket's handshake; -1: none */
    int close_code;      /* of the server's close frame; 0: the socket just ended */
    double retry_after;  /* of a refused handshake's answer; -1: none */
} member_t;

enum group { G_A, G_B, G_PROBE };

typedef struct room {
    long members;        /* members open in this room */
    long sent;           /* lines sent to this room since the counters were zeroed */
    long expected;       /* sum over its members of lines they must get */
    int *senders;        /* member indexes */
    int n_senders;
    long next_sender;
    long max_seq;        /* storm: the highest seq any of its members saw */
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
static int v2;                   /* handshakes ask for v=2 (chat frames carry their seq) */
static long b_members, probe_n;
static double b_rate = 20.0, before_s = 5.0, storm_budget = 60.0, after_s = 2.0;
static int signal_pid, signal_number = 15;
static char **b_event_ids; static int n_b_rooms;
static char **probe_event_ids; static int n_probe_rooms;

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
static int rejoining;             /* members of A that lose their socket reconnect: to A
                                    before the signal (as clients would), to B after it */
static int storm_active;         /* the signal has been sent */

static void storm_lost(member_t *m);
static void storm_refused(member_t *m);
static void storm_back(member_t *m);
static void storm_status(int status);
static void storm_chat(member_t *m, const char *payload, size_t len);

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
        if (rejoining && m->group == G_A) storm_lost(m);
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
    if (v2) storm_chat(m, payload, len);
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
            m->close_code = ((unsigned char)code[0] << 8) | (unsigned char)code[1];
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
static long next_to_connect, connect_first, connect_end;
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
        if (rejoining && m->group == G_A) storm_refused(m);
    }
}

static void send_handshake(member_t *m) {
    char req[2048], extra[48] = "";
    if (v2) {
        if (m->since >= 0) snprintf(extra, sizeof extra, "&v=2&since=%ld", m->since);
        else snprintf(extra, sizeof extra, "&v=2");
    }
    int n = snprintf(req, sizeof req,
                     "GET /api/v1/websockets/event?accessToken=%s&eventId=%s%s HTTP/1.1\r\n"
                     "Host: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     tokens[m->index % n_tokens], event_ids[m->room], extra, m->port);
    m->state = S_HANDSHAKE;
    arm(m, 0);
    send_bytes(m, req, (size_t)n);
}

static void handshake_failed(member_t *m) {
    close_member(m, 0);
    m->state = S_CLOSED;
    if (rejoining && m->group == G_A) { storm_refused(m); return; }
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
            if (m->in_len < 12 || memcmp(m->in + 9, "101", 3)) {
                m->retry_after = -1;
                if (m->in_len >= 12 && rejoining) {
                    char head[1024];
                    size_t hl = (size_t)(end - m->in) < sizeof head - 1
                                ? (size_t)(end - m->in) : sizeof head - 1;
                    memcpy(head, m->in, hl);
                    head[hl] = 0;
                    storm_status(atoi(head + 9));
                    char *ra = strcasestr(head, "\r\nretry-after:");
                    if (ra) m->retry_after = atof(ra + 15);
                }
                handshake_failed(m);
                return;
            }
            size_t head = (size_t)(end + 4 - m->in);
            size_t rest = m->in_len - head;
            m->state = S_OPEN;
            m->close_code = 0;
            m->opened_ns = now_ns();
            m->opened_since = m->since;
            open_total++;
            if (rejoining && m->group == G_A) storm_back(m);
            rooms[m->room].members++;
            opened_count++;
            handshakes_done++;
            if (opened_count == 1000
                || (opened_count == connect_end - connect_first && opened_count < 1000))
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

static double connect_deadline;

static int connect_done(void) {
    while (next_to_connect < connect_end && attempted - handshakes_done < in_flight
           && now_s() < connect_deadline) {
        start_connect(&members[next_to_connect++]);
        if (members[next_to_connect - 1].state == S_CLOSED) handshakes_done++;
    }
    return handshakes_done >= connect_end - connect_first
           || (next_to_connect >= connect_end && attempted == handshakes_done);
}

static void print_connect(FILE *out, double secs) {
    fprintf(out, "\"members\": %ld, \"connect_failures\": %ld, \"connect_seconds\": %.6f, "
            "\"handshakes_per_s\": %.3f, \"handshakes_per_s_first_1000\": %.3f",
            opened_count, connect_failures, secs, opened_count / secs,
            first_1000_s > 0 ? (opened_count < 1000 ? opened_count : 1000) / first_1000_s : 0.0);
}

/* Members [first, end) joined, --in-flight handshakes at a time; the seconds it took. */
static double connect_range(long first, long end) {
    opened_count = attempted = handshakes_done = connect_failures = 0;
    first_1000_s = 0;
    next_to_connect = connect_first = first;
    connect_end = end;
    connect_start_s = now_s();
    connect_deadline = connect_start_s + connect_budget;
    loop_until(connect_deadline + 15.0, connect_done);  /* handshakes in flight may finish */
    /* Give up on the ones still pending past the budget. */
    for (long i = first; i < end; i++)
        if (members[i].state == S_CONNECTING || members[i].state == S_HANDSHAKE)
            handshake_failed(&members[i]);
    return now_s() - connect_start_s;
}

static double connect_all(void) { return connect_range(0, n_members); }

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


/* Storm (bench/storm.py): rooms of A are [0, a_rooms), of B [a_rooms, n_rooms); members of A
   are [0, a_members), of B next, then the probe's. */

static long a_members, a_rooms;
static long storm_members, back_count, open_on_b, reconnect_attempts, refusals, refused_503,
    refused_other, closed_after_back, unsent_lines;
static int64_t storm_ns, first_back_ns, all_back_ns, b_window_ns = INT64_MAX;
#define MAX_CODES 16
static int close_codes[MAX_CODES]; static long close_counts[MAX_CODES]; static int n_codes;
static int64_t *back_ns;
static long *pending, n_pending;
typedef struct { int64_t sent, delay; } b_sample_t;
static b_sample_t *b_samples; static size_t n_b_samples, cap_b_samples;
static long peak_rss;
static int chatting;
/* The first gaps seen, to say where a missed line went missing. */
#define GAPS_KEPT 20
typedef struct { long member, after, got, since; int64_t at_ns, open_ns; } gap_t;
static gap_t gaps_kept[GAPS_KEPT]; static int n_gaps_kept;
static int64_t next_a_ns, next_b_ns, next_rss_ns;
static long next_a_room, next_b_room;

static double jitter(void) { return xorshift() / 4294967296.0; }

/* A random wait up to a cap that doubles from 0.5 s to 30 s with each failed attempt
   (docs/protocol.md "Reconnecting"). */
static double backoff(const member_t *m) {
    double cap = 0.5;
    for (int i = 0; i < m->failures && cap < 30; i++) cap *= 2;
    return jitter() * (cap > 30 ? 30 : cap);
}

static void schedule(member_t *m, double wait_s) {
    m->due_ns = now_ns() + (int64_t)(wait_s * 1e9);
    pending[n_pending++] = m->index;
}

static long rejoins_before_signal;

static void storm_lost(member_t *m) {
    m->since = m->last_seq;
    if (!storm_active) {
        rejoins_before_signal++;
        schedule(m, backoff(m));
        return;
    }
    int c = 0;  /* code 0: the socket ended without a close frame */
    while (c < n_codes && close_codes[c] != m->close_code) c++;
    if (c == n_codes && n_codes < MAX_CODES) close_codes[n_codes++] = m->close_code;
    if (c < MAX_CODES) close_counts[c]++;
    if (m->back) { closed_after_back++; open_on_b--; }
    schedule(m, backoff(m));
}

static void storm_refused(member_t *m) {
    refusals += storm_active;
    m->failures++;
    double wait = backoff(m);
    if (m->retry_after > 0) wait += m->retry_after;
    m->retry_after = -1;
    schedule(m, wait);
}

static void storm_status(int status) {
    if (!storm_active) return;
    if (status == 503) refused_503++; else refused_other++;
}

static void storm_back(member_t *m) {
    m->failures = 0;
    if (!m->reading) return;
    if (!m->back) {
        m->back = 1;
        back_ns[back_count++] = now_ns() - storm_ns;
        if (back_count == storm_members) first_back_ns = now_ns();
    }
    if (++open_on_b == storm_members && !all_back_ns) all_back_ns = now_ns();
}

/* A v2 line's seq: a gap is a line this member never got, a seq again a duplicate. */
static void storm_chat(member_t *m, const char *payload, size_t len) {
    const char *k = memmem(payload, len, "\"seq\":", 6);
    if (!k) return;
    long seq = 0;
    for (k += 6; k < payload + len && *k >= '0' && *k <= '9'; k++) seq = seq * 10 + (*k - '0');
    if (m->last_seq == 0 || seq == m->last_seq + 1) {
        m->last_seq = seq;
    } else if (seq > m->last_seq + 1) {
        if (n_gaps_kept < GAPS_KEPT)
            gaps_kept[n_gaps_kept++] = (gap_t){m->index, m->last_seq, seq, m->opened_since,
                                               now_ns(), m->opened_ns};
        m->gaps += seq - m->last_seq - 1;
        m->last_seq = seq;
    } else {
        m->dups++;
    }
    if (seq > rooms[m->room].max_seq) rooms[m->room].max_seq = seq;
    if (m->group == G_B) {
        int64_t sent = stamp_of(payload, len);
        if (sent >= b_window_ns) {
            b_samples = grow(b_samples, &cap_b_samples, n_b_samples + 1, sizeof *b_samples);
            b_samples[n_b_samples++] = (b_sample_t){sent, now_ns() - sent};
        }
    }
}

/* A line from the room's next open member (members reconnecting are skipped). */
static void storm_send(int room) {
    room_t *r = &rooms[room];
    for (int tries = 0; tries < r->n_senders; tries++) {
        member_t *m = &members[r->senders[r->next_sender++ % r->n_senders]];
        if (m->state != S_OPEN) continue;
        char text[12 + TEXT_BYTES];
        memcpy(text, "chatMessage/", 12);
        int stamp = snprintf(text + 12, TEXT_BYTES + 1, "~%lld~", (long long)now_ns());
        memcpy(text + 12 + stamp, pad, (size_t)(TEXT_BYTES - stamp));
        send_frame(m, 1, text, 12 + TEXT_BYTES);
        sent_total++;
        return;
    }
    unsent_lines++;
}

/* Lines due, reconnects due, B's RSS every 100 ms. */
static void storm_tick(void) {
    int64_t now = now_ns();
    if (chatting) {
        for (; next_a_ns <= now; next_a_ns += (int64_t)(1e9 / rate))
            storm_send((int)(next_a_room++ % a_rooms));
        for (; next_b_ns <= now; next_b_ns += (int64_t)(1e9 / b_rate))
            storm_send((int)(a_rooms + next_b_room++ % n_b_rooms));
    }
    for (long i = 0; i < n_pending;) {
        member_t *m = &members[pending[i]];
        if (m->due_ns > now) { i++; continue; }
        pending[i] = pending[--n_pending];
        m->port = ports[storm_active ? 1 : 0];
        reconnect_attempts += storm_active;
        start_connect(m);
    }
    if (now >= next_rss_ns) {
        long rss = servers_rss();
        if (rss > peak_rss) peak_rss = rss;
        next_rss_ns = now + 100000000;
    }
}

static void storm_loop(double deadline, int (*until)(void)) {
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        storm_tick();
        if (until && until()) return;
        if (now_s() >= deadline) return;
        int n = epoll_wait(ep, evs, MAX_EVENTS, 2);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) on_event(&evs[i]);
    }
}

/* Every member of A open on B at once (one that B closed again is not back). */
static int all_back(void) { return all_back_ns != 0; }

static int all_on_a(void) {
    for (long i = 0; i < a_members; i++) if (members[i].state != S_OPEN) return 0;
    return 1;
}

/* Every open member has the last line any member of its room saw. */
static int caught_up(void) {
    for (long i = 0; i < a_members + b_members; i++) {
        member_t *m = &members[i];
        if (m->state == S_OPEN && m->last_seq < rooms[m->room].max_seq) return 0;
    }
    return 1;
}

static int cmp_delay(const void *a, const void *b) {
    int64_t x = ((const b_sample_t *)a)->delay, y = ((const b_sample_t *)b)->delay;
    return (x > y) - (x < y);
}

/* p50, p99 and max (ms) of the B rooms' lines sent in [from, to). */
static void print_latency(const char *name, int64_t from, int64_t to) {
    size_t n = 0;
    b_sample_t *part = malloc((n_b_samples + 1) * sizeof *part);
    for (size_t i = 0; i < n_b_samples; i++)
        if (b_samples[i].sent >= from && b_samples[i].sent < to) part[n++] = b_samples[i];
    qsort(part, n, sizeof *part, cmp_delay);
    printf(", \"%s_samples\": %zu", name, n);
    if (n) {
        size_t i50 = n / 2, i99 = (size_t)(0.99 * n);
        if (i99 >= n) i99 = n - 1;
        printf(", \"%s_p50_ms\": %.4f, \"%s_p99_ms\": %.4f, \"%s_max_ms\": %.4f", name,
               part[i50].delay / 1e6, name, part[i99].delay / 1e6, name,
               part[n - 1].delay / 1e6);
    }
    free(part);
}

static int cmp_ns(const void *a, const void *b) { return cmp64(a, b); }

static int run_storm(void) {
    printf("{");
    double secs = connect_range(0, a_members);
    printf("\"a\": {");
    print_connect(stdout, secs);
    secs = connect_range(a_members, a_members + b_members);
    printf("}, \"b\": {");
    print_connect(stdout, secs);
    printf("}, \"settled\": %s", settle() ? "true" : "false");
    if (probe_n) {
        loop_until(now_s() + 0.5, NULL);
        secs = connect_range(a_members + b_members, n_members);
        printf(", \"probe\": {");
        print_connect(stdout, secs);
        printf("}");
        for (long i = a_members + b_members; i < n_members; i++) close_member(&members[i], 0);
        loop_until(now_s() + 1.0, NULL);
    }
    fflush(stdout);
    chatting = 1;
    rejoining = 1;
    for (long i = 0; i < a_members; i++)  /* dropped while joining or settling */
        if (members[i].state == S_CLOSED) storm_lost(&members[i]);
    next_a_ns = next_b_ns = now_ns();
    storm_loop(now_s() + warmup, NULL);
    storm_loop(now_s() + settle_budget, all_on_a);  /* the members A dropped are back on A */
    b_window_ns = now_ns();
    storm_loop(now_s() + before_s, NULL);
    long rss_before = servers_rss();
    peak_rss = rss_before;
    for (long i = 0; i < a_members; i++) {
        members[i].reading = members[i].state == S_OPEN;
        storm_members += members[i].reading;
    }
    long b_open_before = 0;
    for (long i = a_members; i < a_members + b_members; i++)
        b_open_before += members[i].state == S_OPEN;
    long closed_before = closed_total;
    if (!storm_members) {  /* nothing to storm with: say why instead of waiting the budget */
        printf(", \"error\": \"no member of A was open at the signal\", "
               "\"closed_before_signal\": %ld, \"b_members_open\": %ld}\n",
               closed_before, b_open_before);
        return 0;
    }
    sample_t s0 = sample();
    storm_active = 1;
    storm_ns = now_ns();
    if (signal_pid > 0 && kill(signal_pid, signal_number) < 0) die("kill");
    fprintf(stderr, "signal\n");
    fflush(stderr);
    storm_loop(now_s() + storm_budget, all_back);
    int64_t storm_end_ns = all_back_ns ? all_back_ns : now_ns();
    sample_t s1 = sample();
    storm_loop(now_s() + after_s, NULL);
    chatting = 0;
    storm_loop(now_s() + 10.0, caught_up);
    storm_active = 0;

    long missed = 0, missed_max = 0, dups = 0, not_back = 0, not_open = 0;
    long b_missed = 0, b_dups = 0, b_disconnected = 0;
    /* The first members whose socket is open but short of its room's last line: a loss at
       the end, which no gap shows. */
    long tails[GAPS_KEPT]; int n_tails = 0;
    for (long i = 0; i < a_members + b_members; i++) {
        member_t *m = &members[i];
        long tail = m->state == S_OPEN ? rooms[m->room].max_seq - m->last_seq : 0;
        long lost = m->gaps + tail;
        if (tail > 0 && n_tails < GAPS_KEPT) tails[n_tails++] = i;
        if (m->group == G_B) {
            b_missed += lost;
            b_dups += m->dups;
            b_disconnected += m->state != S_OPEN;
            continue;
        }
        if (!m->reading) continue;
        if (!m->back) { not_back++; continue; }
        if (m->state != S_OPEN) not_open++;
        missed += lost;
        if (lost > missed_max) missed_max = lost;
        dups += m->dups;
    }
    qsort(back_ns, (size_t)back_count, sizeof *back_ns, cmp_ns);
    double wall = s1.t - s0.t;
    printf(", \"storm_members\": %ld, \"back\": %ld, \"not_back\": %ld, \"back_s\": ",
           storm_members, back_count, not_back);
    if (all_back_ns) printf("%.4f", (all_back_ns - storm_ns) / 1e9); else printf("null");
    printf(", \"first_back_s\": ");
    if (first_back_ns) printf("%.4f", (first_back_ns - storm_ns) / 1e9); else printf("null");
    printf(", \"close_codes\": {");
    for (int c = 0; c < n_codes; c++)
        printf("%s\"%d\": %ld", c ? ", " : "", close_codes[c], close_counts[c]);
    printf("}");
    if (back_count)
        printf(", \"back_p50_s\": %.4f, \"back_p99_s\": %.4f", back_ns[back_count / 2] / 1e9,
               back_ns[(long)(0.99 * back_count)] / 1e9);
    printf(", \"reconnect_attempts\": %ld, \"refused\": %ld, \"refused_503\": %ld, "
           "\"refused_other_status\": %ld, \"closed_after_back\": %ld, \"closed_at_end\": %ld, \"missed_lines\": %ld, "
           "\"missed_max_per_member\": %ld, \"duplicates\": %ld, \"b_members_open\": %ld, "
           "\"b_missed_lines\": %ld, \"b_duplicates\": %ld, \"b_disconnected\": %ld, "
           "\"closed_before_signal\": %ld, \"rejoins_before_signal\": %ld, "
           "\"lines_sent\": %ld, \"lines_unsent\": %ld, "
           "\"rss_before\": %ld, \"rss_peak\": %ld, \"storm_seconds\": %.4f, "
           "\"server_cpu\": %.4f, \"client_cpu\": %.4f",
           reconnect_attempts, refusals, refused_503, refused_other, closed_after_back, not_open, missed, missed_max, dups,
           b_open_before, b_missed, b_dups, b_disconnected, closed_before, rejoins_before_signal,
           sent_total,
           unsent_lines, rss_before, peak_rss, wall, (s1.server - s0.server) / wall,
           (s1.client - s0.client) / wall);
    print_latency("before", b_window_ns, storm_ns);
    print_latency("during", storm_ns, storm_end_ns);
    printf(", \"first_gaps\": [");
    for (int g = 0; g < n_gaps_kept; g++) {
        gap_t *k = &gaps_kept[g];
        printf("%s{\"member\": %ld, \"event_id\": \"%s\", \"after_seq\": %ld, "
               "\"got_seq\": %ld, \"socket_since\": %ld, \"ms_after_signal\": %.1f, "
               "\"ms_after_socket_opened\": %.1f}", g ? ", " : "", k->member,
               event_ids[members[k->member].room], k->after, k->got, k->since,
               storm_ns ? (k->at_ns - storm_ns) / 1e6 : -1.0, (k->at_ns - k->open_ns) / 1e6);
    }
    printf("], \"first_tails\": [");
    int64_t end_ns = now_ns();
    for (int t = 0; t < n_tails; t++) {
        member_t *m = &members[tails[t]];
        printf("%s{\"member\": %ld, \"group\": \"%s\", \"event_id\": \"%s\", "
               "\"last_seq\": %ld, \"room_max_seq\": %ld, \"back\": %d, "
               "\"ms_since_socket_opened\": %.1f}", t ? ", " : "", tails[t],
               m->group == G_B ? "B" : "A", event_ids[m->room], m->last_seq,
               rooms[m->room].max_seq, m->back, (end_ns - m->opened_ns) / 1e6);
    }
    printf("]}\n");
    close_all();
    return 0;
}

/* Room indexes of --event-ids by id (the probe joins some of A's rooms on B). */
static int room_of(const char *id) {
    for (int r = 0; r < a_rooms; r++) if (!strcmp(event_ids[r], id)) return r;
    fprintf(stderr, "loadgen: probe event %s is not one of --event-ids\n", id);
    exit(2);
}

static char **split_ids(const char *s, int *n) {
    char **out = NULL, *copy = strdup(s), *save = NULL;
    size_t cap = 0;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        out = grow(out, &cap, (size_t)*n + 1, sizeof *out);
        out[(*n)++] = t;
    }
    return out;
}

/* The storm's layout over the members and rooms main() made for A alone. */
static void storm_layout(void) {
    if (n_ports < 2 || !n_b_rooms || b_members < n_b_rooms) {
        fprintf(stderr, "loadgen storm: --ports A,B, --b-event-ids and --b-members needed\n");
        exit(2);
    }
    v2 = 1;
    a_members = n_members;
    a_rooms = n_rooms;
    n_members = a_members + b_members + probe_n;
    n_rooms = (int)a_rooms + n_b_rooms;
    event_ids = realloc(event_ids, (size_t)n_rooms * sizeof *event_ids);
    memcpy(event_ids + a_rooms, b_event_ids, (size_t)n_b_rooms * sizeof *event_ids);
    for (int r = 0; r < a_rooms; r++) free(rooms[r].senders);
    free(members);
    free(rooms);
    members = calloc((size_t)n_members, sizeof *members);
    rooms = calloc((size_t)n_rooms, sizeof *rooms);
    pending = calloc((size_t)a_members, sizeof *pending);
    back_ns = calloc((size_t)a_members, sizeof *back_ns);
    for (long i = 0; i < n_members; i++) {
        member_t *m = &members[i];
        m->index = (int)i;
        m->fd = -1;
        m->since = -1;
        m->retry_after = -1;
        if (i < a_members) {
            m->group = G_A;
            m->room = (int)(i % a_rooms);
            m->port = ports[0];
        } else if (i < a_members + b_members) {
            m->group = G_B;
            m->room = (int)(a_rooms + (i - a_members) % n_b_rooms);
            m->port = ports[1];
        } else {
            m->group = G_PROBE;
            m->room = room_of(probe_event_ids[(i - a_members - b_members) % n_probe_rooms]);
            m->port = ports[1];
        }
    }
    /* every member of A or B may send in its room: whoever is open when a line is due */
    for (long i = 0; i < a_members + b_members; i++) rooms[members[i].room].expected++;
    for (int r = 0; r < n_rooms; r++) {
        rooms[r].senders = calloc((size_t)rooms[r].expected + 1, sizeof(int));
        rooms[r].expected = 0;
    }
    for (long i = 0; i < a_members + b_members; i++) {
        room_t *r = &rooms[members[i].room];
        r->senders[r->n_senders++] = (int)i;
    }
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
    fprintf(stderr, "usage: loadgen fanout|latency|connect|soak|trace|storm --ports P[,P…] "
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
        else if (!strcmp(k, "--b-event-ids")) b_event_ids = split_ids(v, &n_b_rooms);
        else if (!strcmp(k, "--b-members")) b_members = atol(v);
        else if (!strcmp(k, "--b-rate")) b_rate = atof(v);
        else if (!strcmp(k, "--probe-event-ids"))
            probe_event_ids = split_ids(v, &n_probe_rooms);
        else if (!strcmp(k, "--probe-n")) probe_n = atol(v);
        else if (!strcmp(k, "--before")) before_s = atof(v);
        else if (!strcmp(k, "--storm-budget")) storm_budget = atof(v);
        else if (!strcmp(k, "--after")) after_s = atof(v);
        else if (!strcmp(k, "--signal-pid")) signal_pid = atoi(v);
        else if (!strcmp(k, "--signal")) signal_number = atoi(v);
        else usage();
    }
    if (!n_ports || !events_arg || !tokens_path || n_members < 1) usage();
    if (rate <= 0) rate = 1;
    if (b_rate <= 0) b_rate = 1;
    if (probe_n && !n_probe_rooms) usage();
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
    else if (!strcmp(mode, "storm")) storm_layout(), rc = run_storm();
    else if (!strcmp(mode, "fanout") || is_latency_mode()) rc = run_room();
    else usage(), rc = 2;
    fflush(stdout);
    if (trace_file) fclose(trace_file);
    return rc;
}
