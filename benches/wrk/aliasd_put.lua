-- Durable creates: PUT /api/aliases/<distinct name> {"target": "m"}; one alias per request.
local counter = 0
local thread_ids = 0
function setup(thread)
  thread:set("tid", thread_ids)
  thread_ids = thread_ids + 1
end
function init(args)
  prefix = "c" .. tid .. "-" .. tostring(os.time()) .. "-"
end
request = function()
  counter = counter + 1
  return wrk.format("PUT", "/api/aliases/" .. prefix .. counter,
    {["Content-Type"] = "application/json"}, '{"target":"m"}')
end
