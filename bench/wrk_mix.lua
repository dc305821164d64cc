-- bench/wrk_mix.lua: the bridge's request mix for wrk, used by bench/run.py
-- (P4) to measure what the FreeScout simulator itself can serve.
--
-- Alternates POST /api/conversations (the body the bridge really sent,
-- read from $FSB_POST_BODY_FILE) and PUT /api/conversations/{id}/tags
-- (ids cycle over 1..$FSB_CONV_IDS, conversations that exist), with the
-- same headers as the bridge, on keep-alive connections.  wrk itself reports
-- non-2xx answers ("Non-2xx or 3xx responses"), which run.py checks.

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local post_body = read_file(os.getenv("FSB_POST_BODY_FILE"))
local tags_body = os.getenv("FSB_TAGS_BODY") or '{"tags":["siem","high"]}'
local conv_ids = tonumber(os.getenv("FSB_CONV_IDS") or "50")
local api_key = os.getenv("FSB_API_KEY")
local headers = {
  ["X-FreeScout-API-Key"] = api_key,
  ["Accept"] = "application/json",
  ["Content-Type"] = "application/json; charset=utf-8",
  ["User-Agent"] = "freescout_bridge/1.0",
}
-- FSB_POST_CLOSE=1 sends each POST with "Connection: close", so every POST
-- gets a new connection, as the bridge's CURLOPT_FRESH_CONNECT does.
local post_headers = {}
for k, v in pairs(headers) do post_headers[k] = v end
if os.getenv("FSB_POST_CLOSE") == "1" then post_headers["Connection"] = "close" end
local n = 0

function setup(thread)
  thread:set("offset", math.random(0, conv_ids - 1))
end

function request()
  n = n + 1
  if n % 2 == 1 then
    return wrk.format("POST", "/api/conversations", post_headers, post_body)
  end
  local id = 1 + ((n / 2 + (offset or 0)) % conv_ids)
  return wrk.format("PUT", "/api/conversations/" .. string.format("%d", id) .. "/tags",
                    headers, tags_body)
end
