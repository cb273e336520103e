/*
 * api_ai -- the AI gateway's OpenAI-compatible routes (doc/ai-gateway.md):
 *   GET  /v1/models             the models of ai_service.models
 *   POST /v1/chat/completions   forwarded to an upstream of the model
 *   POST /v1/completions
 *   POST /v1/embeddings
 * Errors on these routes have OpenAI's shape,
 * {"error":{"message","type","param","code"}}, not rhema's.  The work is
 * core/ai/gateway.c's; this module reads the request and writes the reply.
 */
#ifndef RHEMA_CORE_API_AI_H
#define RHEMA_CORE_API_AI_H

#include "routes.h"

extern const struct rhema_route rhema_ai_routes[];

#endif /* RHEMA_CORE_API_AI_H */
