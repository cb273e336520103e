/*
 * api_console -- what the built-in console needs: the metrics history
 * route (GET /v1/stats/history, metrics/history.h) and the console's
 * static files under /ui/ (monitoring.console).
 *
 * The files are read from one directory, resolved once at startup by
 * rhema_console_open(): monitoring.console.directory when set (it must
 * hold index.html, or startup fails), else the installed
 * $(pkgdatadir)/ui (RHEMA_UIDIR), else -- rhemad run from its build tree
 * -- the source tree's ui/ (RHEMA_SRC_UIDIR).  Only a plain file directly
 * in that directory is served: a name of [A-Za-z0-9._:-] (the router's id
 * rule) that does not start with '.', with a known extension, opened
 * with O_NOFOLLOW.  Each reply carries a strong ETag (a hash of the
 * bytes), answers If-None-Match with 304, and is revalidated
 * (Cache-Control: no-cache).
 *
 * The /ui routes are open (api_auth.c, always_open): the files are the
 * same public files for everybody; the data the console shows comes
 * from the API with the operator's key.
 */
#ifndef RHEMA_CORE_API_CONSOLE_H
#define RHEMA_CORE_API_CONSOLE_H

#include "routes.h"

extern const struct rhema_route rhema_console_routes[];

/*
 * Resolve the console directory (monitoring.console) into srv->console_dir
 * (malloc'd; NULL: the console is off or its files were not found, which
 * is logged).  0, or RHEMA_EINVAL and *err when a configured directory
 * does not hold index.html.  Main thread, before the workers.
 */
struct rhema_server;
int rhema_console_open(struct rhema_server *srv, char **err);
void rhema_console_close(struct rhema_server *srv);

#endif /* RHEMA_CORE_API_CONSOLE_H */
