-- Forged X-Mdmail-Domain fields are deleted and the milter's own is added.
dofile(common)
local conn = connect("127.0.0.2", "MTHEADER")
mail_from(conn, SMFIR_CONTINUE, "<sender@x.test>")
rcpt_to(conn, "<alice@abc.example>", SMFIR_CONTINUE)
message(conn, {
  {"X-Mdmail-Domain", "forged.example (rule: trust me)"},
  {"Subject", "hello"},
  {"X-Mdmail-Domain", "forged again"},
}, "Hello.\r\n")
expect(conn, SMFIR_CONTINUE, "end of message")
if not mt.eom_check(conn, MT_HDRDELETE, "X-Mdmail-Domain") then
  fail("the forged X-Mdmail-Domain was not deleted")
end
local ours = "abc.example (rule: server-address 127.0.0.2)"
if not mt.eom_check(conn, MT_HDRADD, "X-Mdmail-Domain", ours) then
  fail("X-Mdmail-Domain: " .. ours .. " was not added")
end
passed(conn)
