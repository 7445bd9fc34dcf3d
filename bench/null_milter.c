/*
 * A milter that does nothing, for bench/milter_bench.py --ceiling: the floor
 * under what any milter costs Postfix, ours included.
 *
 * It negotiates what ours (milter/mdmilter/filter.py) negotiates: the actions
 * the MTA offers, the steps HELO, unknown command and end of header skipped,
 * header fields and body chunks unanswered, DATA answered, and the same macro
 * lists. Every step answers "continue" and the end of the message adds one
 * header field, as ours does for mail to a hosted domain. So the MTA and
 * libmilter exchange the same packets per message as with ours, and the gap
 * left between this milter and none is theirs, not Python's or our policy's.
 * When the negotiation in filter.py changes, change it here too.
 *
 * Build: cc -O2 -o null_milter null_milter.c -lmilter -pthread
 * Run:   null_milter inet:PORT@127.0.0.1
 */
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <libmilter/mfapi.h>

/* As ours: steps skipped, and steps the MTA need not wait for. */
#define SKIPPED_STEPS (SMFIP_NOHELO | SMFIP_NOUNKNOWN | SMFIP_NOEOH)
#define UNANSWERED_STEPS (SMFIP_NR_HDR | SMFIP_NR_BODY)
/* As ours, in seconds (the bench's milter.timeout). */
#define TIMEOUT 10

/* The steps agreed for this connection, kept in its private pointer. */
static unsigned long agreed_steps(SMFICTX *ctx)
{
    return (unsigned long)(uintptr_t)smfi_getpriv(ctx);
}

/* CONTINUE, or NOREPLY where the MTA agreed to wait for no answer. */
static sfsistat continued(SMFICTX *ctx, unsigned long step)
{
    return agreed_steps(ctx) & step ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat negotiate(SMFICTX *ctx, unsigned long actions,
                          unsigned long steps, unsigned long reserved2,
                          unsigned long reserved3, unsigned long *want_actions,
                          unsigned long *want_steps,
                          unsigned long *want_reserved2,
                          unsigned long *want_reserved3)
{
    (void)reserved2;
    (void)reserved3;
    *want_actions = actions;
    *want_steps = steps & (SKIPPED_STEPS | UNANSWERED_STEPS);
    *want_reserved2 = 0;
    *want_reserved3 = 0;
    /* A number, not a pointer: nothing to free when the connection ends. */
    smfi_setpriv(ctx, (void *)(uintptr_t)*want_steps);
    if (actions & SMFIF_SETSYMLIST) {
        smfi_setsymlist(ctx, SMFIM_CONNECT,
                        "{daemon_addr} {if_addr} {daemon_name}");
        smfi_setsymlist(ctx, SMFIM_ENVFROM, "{i}");
        smfi_setsymlist(ctx, SMFIM_ENVRCPT, "{i}");
        smfi_setsymlist(ctx, SMFIM_EOM, "{i}");
    }
    return SMFIS_CONTINUE;
}

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *address)
{
    (void)ctx;
    (void)host;
    (void)address;
    return SMFIS_CONTINUE;
}

static sfsistat on_envelope(SMFICTX *ctx, char **arguments)
{
    (void)ctx;
    (void)arguments;
    return SMFIS_CONTINUE;
}

static sfsistat on_data(SMFICTX *ctx)
{
    (void)ctx;
    return SMFIS_CONTINUE;
}

static sfsistat on_header(SMFICTX *ctx, char *name, char *value)
{
    (void)name;
    (void)value;
    return continued(ctx, SMFIP_NR_HDR);
}

static sfsistat on_body(SMFICTX *ctx, unsigned char *chunk, size_t length)
{
    (void)chunk;
    (void)length;
    return continued(ctx, SMFIP_NR_BODY);
}

static sfsistat on_eom(SMFICTX *ctx)
{
    smfi_addheader(ctx, "X-Null-Milter", "accepted");
    return SMFIS_CONTINUE;
}

static sfsistat on_abort(SMFICTX *ctx)
{
    (void)ctx;
    return SMFIS_CONTINUE;
}

/*
 * Turn Nagle's algorithm off on libmilter's listening socket, as ours does
 * (milter/mdmilter/listener.py): the accepted connections inherit it, and
 * without it every message whose header is changed waits for a delayed ACK.
 * Returns how many sockets were changed.
 */
static int no_delay_on_listeners(void)
{
    /* Limitation: Linux only (/proc/self/fd); elsewhere the delay stays. */
    DIR *folder = opendir("/proc/self/fd");
    struct dirent *entry;
    int changed = 0;

    if (folder == NULL)
        return 0;
    while ((entry = readdir(folder)) != NULL) {
        char *end;
        int fd = (int)strtol(entry->d_name, &end, 10);
        int listening = 0;
        int on = 1;
        socklen_t size = sizeof listening;
        struct sockaddr_storage address;
        socklen_t address_size = sizeof address;

        if (*end != '\0' || end == entry->d_name)
            continue; /* "." and ".." */
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size) != 0
            || !listening
            || getsockname(fd, (struct sockaddr *)&address, &address_size) != 0)
            continue;
        if (address.ss_family != AF_INET && address.ss_family != AF_INET6)
            continue;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) == 0)
            changed++;
    }
    closedir(folder);
    return changed;
}

int main(int argc, char **argv)
{
    struct smfiDesc description;

    if (argc != 2) {
        fprintf(stderr, "usage: %s inet:PORT@ADDRESS\n", argv[0]);
        return 2;
    }
    memset(&description, 0, sizeof description);
    description.xxfi_name = "null";
    description.xxfi_version = SMFI_VERSION;
    description.xxfi_flags = SMFIF_ADDHDRS;
    description.xxfi_connect = on_connect;
    description.xxfi_envfrom = on_envelope;
    description.xxfi_envrcpt = on_envelope;
    description.xxfi_data = on_data;
    description.xxfi_header = on_header;
    description.xxfi_body = on_body;
    description.xxfi_eom = on_eom;
    description.xxfi_abort = on_abort;
    description.xxfi_negotiate = negotiate;
    if (smfi_setconn(argv[1]) == MI_FAILURE
        || smfi_settimeout(TIMEOUT) == MI_FAILURE
        || smfi_register(description) == MI_FAILURE
        || smfi_opensocket(true) == MI_FAILURE) {
        fprintf(stderr, "null_milter: cannot listen on %s\n", argv[1]);
        return 1;
    }
    if (no_delay_on_listeners() == 0)
        fprintf(stderr, "null_milter: no listening socket for TCP_NODELAY\n");
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
