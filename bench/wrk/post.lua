-- POST the same body on every request, as Segment's libraries do.
--   wrk ... -s bench/wrk/post.lua http://127.0.0.1:PORT/v1/track -- BODY_FILE [AUTHORIZATION]
-- BODY_FILE holds the request body (bench/payloads.py writes it); AUTHORIZATION, if given, is the
-- value of the Authorization header ("Basic <base64 of writekey:>"). The path comes from the URL.

function init(args)
  local path = args[1]
  if path == nil then
    error("usage: wrk ... -s post.lua URL -- BODY_FILE [AUTHORIZATION]")
  end
  local f = assert(io.open(path, "rb"))
  local body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "text/plain"
  if args[2] ~= nil and args[2] ~= "" then
    wrk.headers["Authorization"] = args[2]
  end
end
