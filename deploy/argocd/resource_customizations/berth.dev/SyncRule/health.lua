-- Health of a berth resource (berth.dev), from the conditions berth writes for every
-- kind: Ready, Reconciling (work under way, or waiting for another resource), Stalled
-- (cannot progress until a spec changes). Uses no library but base Lua, so it runs
-- from argocd-cm as it is (scripts there get no string library).
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for berth to report status"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for berth to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local ready = nil
local reconciling = nil
local stalled = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  elseif condition.type == "Reconciling" and condition.status == "True" then
    reconciling = condition
  elseif condition.type == "Stalled" and condition.status == "True" then
    stalled = condition
  end
end
if stalled ~= nil then
  hs.status = "Degraded"
  hs.message = stalled.reason .. ": " .. stalled.message
  return hs
end
if reconciling ~= nil then
  hs.status = "Progressing"
  hs.message = reconciling.reason .. ": " .. reconciling.message
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
if ready ~= nil and ready.reason == "Disabled" then
  hs.status = "Suspended"
  hs.message = ready.message
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. ready.message
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for berth to report Ready"
return hs
