/*
 * api_inbox -- agent inboxes over HTTP (issue 12, item 3; core/inbox.h):
 *
 *   GET  /v1/agents/{id}/inbox?limit=&wait=&visibility=
 *        deliver up to limit waiting messages (priority, then append
 *        order); with wait and nothing to deliver, a blocking query woken
 *        by the change feed's message.created events naming the agent and
 *        at the earliest redelivery time, answering [] at the deadline
 *   POST /v1/sessions/{id}/messages/{message_id}/ack {"agent_id"}
 *        acknowledge a delivered message for that recipient
 */
#ifndef RHEMA_CORE_API_INBOX_H
#define RHEMA_CORE_API_INBOX_H

#include "routes.h"

extern const struct rhema_route rhema_inbox_routes[];

#endif /* RHEMA_CORE_API_INBOX_H */
